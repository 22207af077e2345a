//! The DATA receiver: finds the end of the message (`CRLF.CRLF`, or the bare-LF `LF.LF`
//! that Postfix also accepts from local clients) and removes dot-stuffing (RFC 5321 §4.5.2),
//! without ever copying the message: it hands out slices of its input.
//!
//! It is a four-state machine matched on (state, byte), so a chunk boundary may fall on any
//! byte. The only bytes it ever withholds across a boundary are a line-initial `.` (dropped
//! anyway) and the CR after it; when such a CR turns out to be data (`.\rX`), it is handed
//! out as a static one-byte slice.

/// Where in the current line the receiver is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line: right after DATA's line, or after an LF.
    LineStart,
    /// Inside a line.
    Middle,
    /// A `.` at the start of a line, withheld.
    Dot,
    /// `.` then CR at the start of a line, both withheld.
    DotCr,
}

/// What [`DataReceiver::step`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DataStep<'a> {
    /// Message bytes, unstuffed; never empty.
    Data(&'a [u8]),
    /// The terminating line was consumed; the message is complete.
    End,
    /// The input is used up.
    NeedInput,
}

/// Receives one message sent with DATA.
#[derive(Debug, Clone)]
pub(crate) struct DataReceiver {
    state: State,
}

impl DataReceiver {
    /// A receiver positioned at the start of the first line of a message.
    pub(crate) fn new() -> DataReceiver {
        DataReceiver {
            state: State::LineStart,
        }
    }

    /// Advances over `input`; returns the number of bytes consumed and what was found. Call
    /// again with the unconsumed rest until [`DataStep::NeedInput`] or [`DataStep::End`].
    /// Bytes after the terminator are never consumed.
    pub(crate) fn step<'a>(&mut self, input: &'a [u8]) -> (usize, DataStep<'a>) {
        let mut at = 0;
        // First the withheld or dropped bytes at a line start, one at a time.
        loop {
            let Some(&byte) = input.get(at) else {
                return (at, DataStep::NeedInput);
            };
            match (self.state, byte) {
                (State::LineStart, b'.') => {
                    self.state = State::Dot;
                    at += 1;
                }
                (State::LineStart | State::Middle, _) => break,
                (State::Dot | State::DotCr, b'\n') => {
                    self.state = State::LineStart;
                    return (at + 1, DataStep::End);
                }
                (State::Dot, b'\r') => {
                    self.state = State::DotCr;
                    at += 1;
                }
                // `.X`: the dot was stuffing (or a client's mistake); RFC 5321 §4.5.2 says
                // drop it either way. X, even another `.`, is data.
                (State::Dot, _) => {
                    self.state = State::Middle;
                    break;
                }
                // `.\rX`: not the terminator after all; the withheld CR is data.
                (State::DotCr, _) => {
                    self.state = State::Middle;
                    return (at, DataStep::Data(b"\r"));
                }
            }
        }
        // Then one run of verbatim data, up to a line-initial dot or the end of the input.
        let start = at;
        while at < input.len() {
            if self.state == State::LineStart {
                if input[at] == b'.' {
                    break;
                }
                self.state = State::Middle;
            }
            match input[at..].iter().position(|&b| b == b'\n') {
                Some(lf) => {
                    at += lf + 1;
                    self.state = State::LineStart;
                }
                None => at = input.len(),
            }
        }
        (at, DataStep::Data(&input[start..at]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `input` split into `pieces`; returns the unstuffed data, and the number of bytes
    /// consumed up to the end of the message if it ended.
    fn receive(pieces: &[&[u8]]) -> (Vec<u8>, Option<usize>) {
        let mut receiver = DataReceiver::new();
        let mut data = Vec::new();
        let mut offset = 0;
        for piece in pieces {
            let mut at = 0;
            loop {
                let (used, step) = receiver.step(&piece[at..]);
                at += used;
                match step {
                    DataStep::Data(bytes) => {
                        assert!(!bytes.is_empty(), "empty data slice");
                        data.extend_from_slice(bytes);
                    }
                    DataStep::End => return (data, Some(offset + at)),
                    DataStep::NeedInput => {
                        assert_eq!(at, piece.len(), "NeedInput before the input ran out");
                        break;
                    }
                }
            }
            offset += piece.len();
        }
        (data, None)
    }

    #[test]
    fn table() {
        // (input, unstuffed data, bytes consumed when the terminator was found)
        let table: &[(&[u8], &[u8], Option<usize>)] = &[
            (b".\r\n", b"", Some(3)),
            (b".\n", b"", Some(2)),
            (b"a\r\n.\r\nQUIT\r\n", b"a\r\n", Some(6)),
            (b"a\n.\nQUIT\n", b"a\n", Some(4)),
            (b"a\r\n.\n", b"a\r\n", Some(5)),
            (b"a\n.\r\n", b"a\n", Some(5)),
            (b"..\r\n.\r\n", b".\r\n", Some(7)),
            (b"...x\r\n.\r\n", b"..x\r\n", Some(9)),
            (b".x\r\n.\r\n", b"x\r\n", Some(7)),
            (b"a.\r\n.\r\n", b"a.\r\n", Some(7)),
            (b"a\r\n. \r\n.\r\n", b"a\r\n \r\n", Some(10)),
            (b".\rx\r\n.\r\n", b"\rx\r\n", Some(8)),
            (b".\r\r\n.\r\n", b"\r\r\n", Some(7)),
            (b"a\r.\r\n.\r\n", b"a\r.\r\n", Some(8)),
            (b"\x00\xff\r\n.\r\n", b"\x00\xff\r\n", Some(7)),
            (b"no end\r\n", b"no end\r\n", None),
            (b"no end\r\n.", b"no end\r\n", None),
            (b"no end\r\n.\r", b"no end\r\n", None),
            (b"x\r\n..", b"x\r\n.", None),
        ];
        for &(input, data, end) in table {
            let whole = receive(&[input]);
            assert_eq!(whole, (data.to_vec(), end), "input {input:?}");
            for split in 0..=input.len() {
                let (a, b) = input.split_at(split);
                assert_eq!(receive(&[a, b]), whole, "input {input:?} split at {split}");
            }
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            assert_eq!(receive(&bytes), whole, "input {input:?} byte at a time");
        }
    }

    /// A run of data is handed out as one slice, however many lines it has.
    #[test]
    fn runs_are_not_copied_line_by_line() {
        let input = b"one\r\ntwo\r\nthree\r\n.\r\n";
        let mut receiver = DataReceiver::new();
        assert_eq!(receiver.step(input), (17, DataStep::Data(&input[..17])));
        assert_eq!(receiver.step(&input[17..]), (3, DataStep::End));
    }
}
