//! The checks shared by the fuzz targets: a host that drives an SMTP session the way the
//! daemon does and checks the engine's contract at every step, the SMTP-alphabet mapping,
//! split-point derivation, and a driver for the sendmail stdin filter.
//!
//! Every check panics on a broken promise, so libFuzzer records the input as a crash.

use smtp_bridge::sendmail::intake::Intake;
use smtp_bridge::smtp::{Event, Session, SessionConfig, Transaction};

/// Limits small enough that short inputs cross every one of them.
pub fn small_config() -> SessionConfig {
    SessionConfig {
        hostname: "mx.test".to_string(),
        banner: String::new(),
        max_message_size: 100,
        max_recipients: 2,
        max_line_length: 64,
    }
}

/// The daemon's defaults (see DESIGN.md), with the line limit of the server.
pub fn default_config() -> SessionConfig {
    SessionConfig {
        hostname: "mx.test".to_string(),
        banner: String::new(),
        max_message_size: 33_554_432,
        max_recipients: 1000,
        max_line_length: 2048,
    }
}

/// One configuration of the two, chosen by a bit of the input.
pub fn config_for(selector: u8) -> SessionConfig {
    if selector & 1 == 0 {
        small_config()
    } else {
        default_config()
    }
}

/// What became of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Committed; the client got 250.
    Queued,
    /// The host failed to commit it; the client got 452.
    CommitFailed,
    /// The engine aborted it.
    Aborted,
    /// The input ended inside it.
    Unfinished,
}

/// One message as the host saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Envelope of the transaction.
    pub transaction: Transaction,
    /// Data handed out (cleared when aborted: how much came before the abort depends on
    /// where the input was split).
    pub data: Vec<u8>,
    /// What became of it.
    pub outcome: Outcome,
}

/// Everything observable from one session.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Transcript {
    /// Every reply byte, greeting included.
    pub output: Vec<u8>,
    /// Every message begun.
    pub messages: Vec<Message>,
    /// Whether the engine asked to close.
    pub closed: bool,
    /// Input bytes consumed.
    pub consumed: usize,
}

/// A message whose data contains this fails to commit (the host's disk is "full").
pub const FAIL_MARKER: &[u8] = b"FAIL-COMMIT";

/// Drives a fresh session with `chunks` (in order), checking the driving contract that the
/// daemon relies on at every call.
pub fn drive<'c>(config: SessionConfig, chunks: impl IntoIterator<Item = &'c [u8]>) -> Transcript {
    let max_line = config.max_line_length;
    let max_size = config.max_message_size;
    let mut session = Session::new(config);
    let mut t = Transcript::default();
    session.greeting(&mut t.output);
    let mut open: Option<Message> = None;
    let mut queue_number = 0u32;
    'chunks: for chunk in chunks {
        let mut pos = 0;
        loop {
            let rest = &chunk[pos..];
            let (used, event) = session.feed(rest, &mut t.output);
            assert!(used <= rest.len(), "consumed {used} of {}", rest.len());
            pos += used;
            t.consumed += used;
            assert!(
                session.buffered() < max_line.max(1),
                "line buffer {} not below {max_line}",
                session.buffered()
            );
            match event {
                Event::NeedInput => {
                    assert_eq!(pos, chunk.len(), "NeedInput with input left");
                    break;
                }
                Event::MessageStart(transaction) => {
                    assert!(open.is_none(), "MessageStart inside a message");
                    assert!(session.in_message(), "MessageStart but not in_message");
                    open = Some(Message {
                        transaction,
                        data: Vec::new(),
                        outcome: Outcome::Unfinished,
                    });
                }
                Event::Data(bytes) => {
                    assert!(!bytes.is_empty(), "empty Data event");
                    let inside = rest.as_ptr_range().contains(&bytes.as_ptr());
                    assert!(inside || bytes == b"\r", "Data not a slice of the input");
                    let message = open.as_mut().expect("Data outside a message");
                    message.data.extend_from_slice(bytes);
                    assert!(
                        message.data.len() as u64 <= max_size,
                        "Data beyond max_message_size"
                    );
                }
                Event::MessageAbort => {
                    let mut message = open.take().expect("MessageAbort outside a message");
                    assert!(!session.in_message(), "in_message after MessageAbort");
                    message.data.clear();
                    message.outcome = Outcome::Aborted;
                    t.messages.push(message);
                }
                Event::MessageEnd => {
                    let mut message = open.take().expect("MessageEnd outside a message");
                    assert!(session.is_waiting(), "MessageEnd but not waiting");
                    assert!(!session.in_message(), "in_message after MessageEnd");
                    let before = t.output.len();
                    let (waited, event) = session.feed(&chunk[pos..], &mut t.output);
                    assert_eq!(
                        (waited, event),
                        (0, Event::Waiting),
                        "input taken while waiting"
                    );
                    assert_eq!(t.output.len(), before, "reply written while waiting");
                    let failing = message
                        .data
                        .windows(FAIL_MARKER.len())
                        .any(|w| w == FAIL_MARKER);
                    if failing {
                        session.committed(Err("disk full"), &mut t.output);
                        message.outcome = Outcome::CommitFailed;
                    } else {
                        queue_number += 1;
                        session.committed(Ok(&format!("Q{queue_number}")), &mut t.output);
                        message.outcome = Outcome::Queued;
                    }
                    assert!(!session.is_waiting(), "still waiting after committed");
                    t.messages.push(message);
                }
                Event::Waiting => panic!("Waiting without a MessageEnd"),
                Event::Close => {
                    t.closed = true;
                    break 'chunks;
                }
            }
        }
    }
    if let Some(message) = open {
        t.messages.push(message);
    }
    t
}

/// Checks the replies' form — every line `DDD-text` or `DDD text`, printable ASCII, ended by
/// CRLF, no CR or LF inside (a client must never be able to forge a reply line) — and that
/// the replies stay in proportion to the input: at most two replies per input line (a
/// command and the end of its data) plus the greeting and a closing reply.
pub fn check_replies(output: &[u8], input: &[u8]) {
    assert!(
        output.is_empty() || output.ends_with(b"\r\n"),
        "unterminated reply"
    );
    let mut replies = 0usize;
    let mut in_multiline = false;
    for line in output.split(|&b| b == b'\n') {
        if line.is_empty() {
            continue;
        }
        let line = line.strip_suffix(b"\r").expect("reply line without CRLF");
        assert!(
            line.len() >= 4,
            "short reply line {:?}",
            String::from_utf8_lossy(line)
        );
        assert!(
            line.len() <= 512,
            "reply line over 512 bytes (RFC 5321 4.5.3.1.5)"
        );
        assert!(line[..3].iter().all(u8::is_ascii_digit), "bad reply code");
        assert!(
            line.iter().all(|&b| (0x20..0x7f).contains(&b)),
            "reply line with a byte outside printable ASCII: {:?}",
            String::from_utf8_lossy(line)
        );
        match line[3] {
            b' ' => {
                replies += 1;
                in_multiline = false;
            }
            b'-' => in_multiline = true,
            _ => panic!("bad separator in {:?}", String::from_utf8_lossy(line)),
        }
    }
    assert!(!in_multiline, "unfinished multi-line reply");
    let lines = input.iter().filter(|&&b| b == b'\n').count();
    assert!(
        replies <= 2 * lines + 2,
        "{replies} replies for {lines} input lines"
    );
}

/// Tokens of the SMTP alphabet: one input byte picks one token, so that short inputs make
/// whole command sequences (the approach of smtp-proto's fuzzer).
#[rustfmt::skip]
pub const ALPHABET: &[&[u8]] = &[
    b"HELO ", b"EHLO ", b"MAIL FROM:", b"RCPT TO:", b"DATA", b"BDAT ", b" LAST", b"RSET",
    b"NOOP", b"QUIT", b"VRFY ", b"EXPN ", b"HELP", b"STARTTLS", b"AUTH PLAIN", b"<", b">",
    b"@", b".", b"\r\n", b"\n", b"\r", b" ", b"SIZE=", b"BODY=8BITMIME", b"BODY=BINARYMIME",
    b"BODY=7BIT", b"SMTPUTF8", b"0", b"1", b"5", b"9", b"100", b"18446744073709551616", b"a",
    b"example.org", b"\r\n.\r\n", b"\n.\n", b"..", b":", b"=", b"\0", "é".as_bytes(), b"\xff",
    b"\xc3", b"\"", b"\\", b"(", b")", b"[127.0.0.1]", b"[IPv6:::1]", FAIL_MARKER, b"postmaster",
    b",", b"\t", b"MAIL FROM:<a@b>\r\n", b"RCPT TO:<root>\r\n", b"DATA\r\n", b"BDAT 5\r\n",
    b"BDAT 0 LAST\r\n", b"EHLO x\r\n", b"x", b"mail from: <", b"rcpt to:", b"NOTIFY=NEVER",
    b"RET=HDRS", b"ENVID=x", b"AUTH=<>", b"%", b"!", b"+", b"-", b"bdat ", b"last",
];

/// Maps every input byte to its token.
pub fn alphabet(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() * 4);
    for &b in input {
        out.extend_from_slice(ALPHABET[b as usize % ALPHABET.len()]);
    }
    out
}

/// Cuts `input` at the offsets `seed` describes: each seed byte is the length (1..=256) of
/// the next chunk, cycling through the seed; an empty seed gives one byte per chunk.
pub fn split<'i>(input: &'i [u8], seed: &[u8]) -> Vec<&'i [u8]> {
    let mut chunks = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    while pos < input.len() {
        let len = seed
            .get(i % seed.len().max(1))
            .map_or(1, |&b| b as usize + 1);
        let end = (pos + len).min(input.len());
        chunks.push(&input[pos..end]);
        pos = end;
        i += 1;
    }
    chunks
}

/// Runs `input` through a session whole, then split as `seed` says and byte at a time (for
/// short inputs): the replies, messages and close must be identical, and each run must keep
/// the contract.
pub fn differential(config: SessionConfig, input: &[u8], seed: &[u8]) {
    let whole = drive(config.clone(), [input]);
    check_replies(&whole.output, input);
    let split_run = drive(config.clone(), split(input, seed));
    assert_eq!(whole, split_run, "split at {seed:?} differs from one chunk");
    if input.len() <= 4096 {
        let bytes = drive(config, input.chunks(1));
        assert_eq!(whole, bytes, "byte at a time differs from one chunk");
    }
}

/// The sendmail stdin filter's observable result.
#[derive(Debug, PartialEq, Eq)]
pub struct Filtered {
    /// Message bytes out.
    pub out: Vec<u8>,
    /// Input bytes consumed.
    pub consumed: usize,
    /// Whether the lone-dot line ended the input.
    pub ended: bool,
    /// The sender of a leading `From ` line.
    pub from_line_sender: Option<String>,
}

/// Feeds `chunks` to a fresh filter the way `sendmail` reads stdin — chunk after chunk,
/// also after the terminating dot (the filter must then consume nothing) — and finishes it.
pub fn filter<'c>(ignore_dots: bool, chunks: impl IntoIterator<Item = &'c [u8]>) -> Filtered {
    let mut intake = Intake::new(ignore_dots);
    let mut out = Vec::new();
    let mut consumed = 0;
    let mut ended_by_dot = false;
    for chunk in chunks {
        let used = intake.feed(chunk, &mut out);
        assert!(used <= chunk.len(), "consumed more than given");
        if ended_by_dot {
            assert_eq!(used, 0, "input consumed after the terminating dot");
        }
        assert!(
            used == chunk.len() || intake.ended(),
            "input left unconsumed without a terminating dot"
        );
        consumed += used;
        ended_by_dot = intake.ended();
    }
    if !intake.ended() {
        intake.finish(&mut out);
    }
    Filtered {
        out,
        consumed,
        ended: ended_by_dot,
        from_line_sender: intake.from_line_sender().map(str::to_owned),
    }
}
