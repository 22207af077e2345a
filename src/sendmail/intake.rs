//! The stdin rules of a local submission: line ends, the lone-dot terminator, leading
//! `From ` lines, and the header recipients that `-t` reads.
//!
//! [`Intake`] is an incremental filter: bytes in as they arrive, message bytes out, so the
//! caller can stream a message of any size. It follows Postfix, which callers were written
//! against:
//! - The CR in front of each LF is removed (PHP sends CRLF headers and an LF body); a bare CR
//!   inside a line is kept.
//! - Unless `-i`/`-oi`, a line that is exactly `.` (also `.\r\n`, also a final `.` without a
//!   newline) ends the input, and whatever follows stays unread. Leading dots are never
//!   removed: Symfony's `-t` mode doubles them for sendmail 8 to undo, and on Postfix, as
//!   here, such lines keep both dots.
//! - Leading `From ` and `>From ` lines (mbox separators, rmail) are skipped; the first
//!   one's sender is remembered for the envelope.

/// A leading line longer than this is message text, not an mbox `From ` line.
const MAX_FROM_LINE: usize = 8192;

/// Where the byte filter is within a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line.
    LineStart,
    /// A line that so far holds only a dot (the terminator, if the line ends here).
    Dot,
    /// A line that so far holds a dot and a CR.
    DotCr,
    /// Inside a line.
    Mid,
    /// A CR was read; it is dropped if an LF follows and kept otherwise.
    Cr,
    /// The terminating dot line was read: nothing more is consumed.
    Ended,
}

/// The incremental stdin filter of one message.
#[derive(Debug)]
pub struct Intake {
    ignore_dots: bool,
    state: State,
    /// While true, lines are held in `line` to see whether they are `From ` lines.
    in_preamble: bool,
    line: Vec<u8>,
    from_line_sender: Option<String>,
}

impl Intake {
    /// A filter; `ignore_dots` is `-i`/`-oi`.
    pub fn new(ignore_dots: bool) -> Intake {
        Intake {
            ignore_dots,
            state: State::LineStart,
            in_preamble: true,
            line: Vec::new(),
            from_line_sender: None,
        }
    }

    /// Filters `input`, appending message bytes to `out`. Returns how many bytes of `input`
    /// were consumed: all of them, unless the terminating dot line ended the message, after
    /// which nothing more is consumed.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> usize {
        // Checked before the loop: otherwise a call after the end would take one byte.
        if self.state == State::Ended {
            return 0;
        }
        for (i, &byte) in input.iter().enumerate() {
            self.byte(byte, out);
            if self.state == State::Ended {
                return i + 1;
            }
        }
        input.len()
    }

    /// Whether the terminating dot line was read.
    pub fn ended(&self) -> bool {
        self.state == State::Ended
    }

    /// End of input: flushes what is held (a final CR, a partial line) into `out`.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        match self.state {
            // A final `.` without a newline still ends the input (Postfix).
            State::Dot | State::DotCr | State::Ended => {}
            State::Cr => self.emit(b'\r', out),
            State::LineStart | State::Mid => {}
        }
        self.state = State::Ended;
        self.flush_preamble(out);
    }

    /// The sender named by the first leading `From ` line, if there was one; `Some("")` for
    /// `From <>` or `From MAILER-DAEMON`.
    pub fn from_line_sender(&self) -> Option<&str> {
        self.from_line_sender.as_deref()
    }

    fn byte(&mut self, byte: u8, out: &mut Vec<u8>) {
        self.state = match (self.state, byte) {
            (State::Ended, _) => State::Ended,
            (State::LineStart, b'.') if !self.ignore_dots => State::Dot,
            (State::Dot | State::DotCr, b'\n') => State::Ended,
            (State::Dot, b'\r') => State::DotCr,
            (State::Dot, _) => {
                self.emit(b'.', out);
                self.after_text(byte, out)
            }
            (State::DotCr, _) => {
                self.emit(b'.', out);
                self.emit(b'\r', out);
                self.after_text(byte, out)
            }
            (State::Cr, b'\n') => {
                self.emit(b'\n', out);
                State::LineStart
            }
            (State::Cr, b'\r') => {
                self.emit(b'\r', out);
                State::Cr
            }
            (State::Cr, _) => {
                self.emit(b'\r', out);
                self.after_text(byte, out)
            }
            (State::LineStart | State::Mid, _) => self.after_text(byte, out),
        };
    }

    /// The state after an ordinary byte inside a line.
    fn after_text(&mut self, byte: u8, out: &mut Vec<u8>) -> State {
        match byte {
            b'\r' => State::Cr,
            b'\n' => {
                self.emit(b'\n', out);
                State::LineStart
            }
            _ => {
                self.emit(byte, out);
                State::Mid
            }
        }
    }

    fn emit(&mut self, byte: u8, out: &mut Vec<u8>) {
        if !self.in_preamble {
            out.push(byte);
            return;
        }
        self.line.push(byte);
        if byte == b'\n' {
            if self.line.starts_with(b"From ") || self.line.starts_with(b">From ") {
                if self.from_line_sender.is_none() && self.line.starts_with(b"From ") {
                    self.from_line_sender = Some(from_line_sender(&self.line));
                }
                self.line.clear();
            } else {
                self.flush_preamble(out);
            }
        } else if self.line.len() > MAX_FROM_LINE || !could_be_from_line(&self.line) {
            // Not (or no longer possibly) a From_ line: stop holding lines back.
            self.flush_preamble(out);
        }
    }

    fn flush_preamble(&mut self, out: &mut Vec<u8>) {
        if self.in_preamble {
            self.in_preamble = false;
            out.append(&mut self.line);
        }
    }
}

/// Whether a partial line may still turn out to be a `From ` or `>From ` line.
fn could_be_from_line(line: &[u8]) -> bool {
    [&b"From "[..], &b">From "[..]]
        .iter()
        .any(|p| line.starts_with(p) || p.starts_with(line))
}

/// The sender of an mbox `From sender date` line.
fn from_line_sender(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let word = text.split_whitespace().nth(1).unwrap_or("");
    match word {
        "<>" | "MAILER-DAEMON" => String::new(),
        w => w.trim_start_matches('<').trim_end_matches('>').to_owned(),
    }
}

/// The recipients `-t` takes from a message's header section: `To`, `Cc` and `Bcc`, or only
/// `Resent-To`, `Resent-Cc` and `Resent-Bcc` when any of those is present (Postfix). Names
/// match case-insensitively, folded lines are unfolded, and the header section ends at the
/// first empty line or the first line that is neither a header nor a continuation.
pub fn header_recipients(message: &[u8]) -> Vec<String> {
    let mut normal = Vec::new();
    let mut resent = Vec::new();
    for (name, value) in headers(message) {
        let name = name.to_ascii_lowercase();
        match name.as_str() {
            "to" | "cc" | "bcc" => normal.push(value),
            "resent-to" | "resent-cc" | "resent-bcc" => resent.push(value),
            _ => {}
        }
    }
    let chosen = if resent.is_empty() { normal } else { resent };
    chosen
        .iter()
        .flat_map(|value| super::address::parse_list(value))
        .collect()
}

/// The unfolded (name, value) pairs of the header section.
fn headers(message: &[u8]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for raw in message.split(|&b| b == b'\n') {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            match out.last_mut() {
                Some((_, value)) => {
                    value.push(' ');
                    value.push_str(String::from_utf8_lossy(line).trim());
                    continue;
                }
                None => break,
            }
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            break;
        };
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|&b| b.is_ascii_graphic()) {
            break;
        }
        out.push((
            String::from_utf8_lossy(name).into_owned(),
            String::from_utf8_lossy(&line[colon + 1..])
                .trim()
                .to_owned(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8], ignore_dots: bool) -> (Vec<u8>, usize, Option<String>) {
        let mut intake = Intake::new(ignore_dots);
        let mut out = Vec::new();
        let used = intake.feed(input, &mut out);
        if !intake.ended() {
            intake.finish(&mut out);
        }
        (out, used, intake.from_line_sender().map(str::to_owned))
    }

    /// (label, input, -i, output, bytes consumed when not all of them)
    type LineCase = (
        &'static str,
        &'static [u8],
        bool,
        &'static [u8],
        Option<usize>,
    );

    #[test]
    fn line_rules() {
        let cases: &[LineCase] = &[
            ("plain", b"a\nb\n", false, b"a\nb\n", None),
            ("crlf", b"a\r\nb\r\n", false, b"a\nb\n", None),
            (
                "mixed like php",
                b"To: x\r\nSubject: s\r\n\r\nbody\n",
                false,
                b"To: x\nSubject: s\n\nbody\n",
                None,
            ),
            ("bare cr kept", b"a\rb\n", false, b"a\rb\n", None),
            ("cr cr lf", b"a\r\r\n", false, b"a\r\n", None),
            ("final cr kept", b"a\r", false, b"a\r", None),
            ("no final newline", b"a\nb", false, b"a\nb", None),
            ("dot ends", b"a\n.\nafter\n", false, b"a\n", Some(4)),
            (
                "dot crlf ends",
                b"a\r\n.\r\nafter\n",
                false,
                b"a\n",
                Some(6),
            ),
            ("final dot without newline", b"a\n.", false, b"a\n", None),
            ("final dot cr", b"a\n.\r", false, b"a\n", None),
            ("dot at the very start", b".\nrest", false, b"", Some(2)),
            (
                "dot with -i",
                b"a\n.\nafter\n",
                true,
                b"a\n.\nafter\n",
                None,
            ),
            ("double dot kept", b"..x\n.y\n", false, b"..x\n.y\n", None),
            ("dot then text", b".x\n", false, b".x\n", None),
            ("dot cr text", b".\rx\n", false, b".\rx\n", None),
            ("dot in mid line", b"a.\n", false, b"a.\n", None),
            ("empty", b"", false, b"", None),
            (
                "from line skipped",
                b"From root@x Tue Nov 24 14:00:00 2026\nSubject: s\n",
                false,
                b"Subject: s\n",
                None,
            ),
            (
                ">From lines skipped",
                b"From a@x d\n>From b@y d\nS: s\n",
                false,
                b"S: s\n",
                None,
            ),
            (
                "From later is text",
                b"S: s\nFrom a@x d\n",
                false,
                b"S: s\nFrom a@x d\n",
                None,
            ),
            (
                "Fromage is text",
                b"Fromage: yes\n",
                false,
                b"Fromage: yes\n",
                None,
            ),
            ("From without newline", b"From", false, b"From", None),
        ];
        for (label, input, i, want, used) in cases {
            let (out, n, _) = run(input, *i);
            assert_eq!(out, *want, "{label}: {:?}", String::from_utf8_lossy(&out));
            assert_eq!(n, used.unwrap_or(input.len()), "{label}: consumed");
        }
    }

    #[test]
    fn split_at_every_offset() {
        let input: &[u8] = b"From a@x d\r\nTo: x\r\n\r\nbody\rline\r\n..\r\nmore\n.\r\nignored\n";
        let (whole, _, sender) = run(input, false);
        assert_eq!(whole, b"To: x\n\nbody\rline\n..\nmore\n");
        assert_eq!(sender.as_deref(), Some("a@x"));
        for cut in 0..input.len() {
            let mut intake = Intake::new(false);
            let mut out = Vec::new();
            intake.feed(&input[..cut], &mut out);
            if !intake.ended() {
                intake.feed(&input[cut..], &mut out);
            }
            if !intake.ended() {
                intake.finish(&mut out);
            }
            assert_eq!(out, whole, "cut at {cut}");
        }
    }

    #[test]
    fn from_line_senders() {
        let cases: &[(&[u8], Option<&str>)] = &[
            (b"From root@x Tue Nov 24 14:00:00 2026\n\n", Some("root@x")),
            (b"From <> Tue\n\n", Some("")),
            (b"From MAILER-DAEMON Tue\n\n", Some("")),
            (b">From a@x Tue\n\n", None),
            (b"Subject: x\n\n", None),
        ];
        for (input, want) in cases {
            assert_eq!(run(input, false).2.as_deref(), *want);
        }
    }

    #[test]
    fn recipients_from_headers() {
        let cases: &[(&str, &[u8], &[&str])] = &[
            (
                "to cc bcc",
                b"To: a@x\nCc: B <b@y>, c@z\nBcc: d@w\nSubject: s\n\nTo: body@x\n",
                &["a@x", "b@y", "c@z", "d@w"],
            ),
            (
                "case-insensitive",
                b"tO: a@x\nCC: b@y\nbcc: c@z\n\n",
                &["a@x", "b@y", "c@z"],
            ),
            (
                "folded",
                b"To: a@x,\n  B <b@y>,\r\n\tc@z\nSubject: s\n\n",
                &["a@x", "b@y", "c@z"],
            ),
            (
                "resent wins",
                b"To: a@x\nResent-To: r@x\nResent-Bcc: rb@x\n\n",
                &["r@x", "rb@x"],
            ),
            (
                "resent-from alone does not count",
                b"To: a@x\nResent-From: r@x\n\n",
                &["a@x"],
            ),
            (
                "group",
                b"To: undisclosed-recipients:;\nBcc: hidden@x\n\n",
                &["hidden@x"],
            ),
            ("named group", b"To: team: a@x, b@y;\n\n", &["a@x", "b@y"]),
            (
                "encoded name",
                b"To: =?UTF-8?B?w6lsw6g=?= <e@x>\n\n",
                &["e@x"],
            ),
            (
                "headers end at a non-header line",
                b"To: a@x\nnot a header\nCc: b@y\n\n",
                &["a@x"],
            ),
            ("no headers", b"", &[]),
            ("crlf", b"To: a@x\r\nCc: b@y\r\n\r\n", &["a@x", "b@y"]),
            (
                "Delivered-To ignored",
                b"Delivered-To: d@x\nX-To: x@x\n\n",
                &[],
            ),
        ];
        for (label, input, want) in cases {
            assert_eq!(header_recipients(input), *want, "{label}");
        }
    }
}
