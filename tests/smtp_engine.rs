//! Byte-script tests of the SMTP engine (`smtp::Session`) and of `smtp::stdio::serve`.
//!
//! A small host (`run`: `drive` of `fuzz/src/lib.rs`, shared with the fuzz targets) plays
//! the daemon's part: it feeds input chunks, collects messages from the events, checks the driving contract on every call (data only inside a message,
//! nothing consumed while waiting, bounded internal buffer, data handed out as slices of the
//! input) and commits each message. Every script is run whole, split at every byte offset,
//! byte at a time and at random offsets, and must give identical output and data each time.
//! Random input (a xorshift PRNG, bounded) must never break any of this. Real clients —
//! lettre, Python's smtplib, curl — then talk to the engine over loopback through
//! `stdio::serve` (a `TcpStream` is a `Read` and a `Write`).

use std::io::Cursor;

use smtp_bridge::smtp::{stdio, Event, Session, SessionConfig, Transaction};

/// The host the fuzz targets use (`fuzz/src/lib.rs`), shared so that both check the same
/// driving contract: it feeds chunks, collects messages from the events, commits each one
/// (a message containing `FAIL-COMMIT` "fails to reach the disk") and asserts the contract
/// at every call.
#[allow(dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod harness;

use harness::{drive as run, Outcome, Transcript};

/// Small limits so that scripts can cross them in a few bytes.
fn small_config() -> SessionConfig {
    SessionConfig {
        hostname: "mx.test".to_string(),
        banner: String::new(),
        max_message_size: 100,
        max_recipients: 2,
        max_line_length: 80,
    }
}

/// Splits output into replies (multi-line ones joined) and checks each line's form.
fn replies(output: &[u8]) -> Vec<String> {
    let text = String::from_utf8(output.to_vec()).expect("replies are UTF-8");
    assert!(
        text.is_empty() || text.ends_with("\r\n"),
        "unterminated reply"
    );
    let mut replies = Vec::new();
    let mut current = String::new();
    for line in text.split_terminator("\r\n") {
        let bytes = line.as_bytes();
        assert!(bytes.len() >= 4, "short reply line {line:?}");
        assert!(
            bytes[..3].iter().all(u8::is_ascii_digit),
            "bad code {line:?}"
        );
        assert!(!line.contains('\n') && !line.contains('\r'), "{line:?}");
        current.push_str(line);
        match bytes[3] {
            b' ' => replies.push(std::mem::take(&mut current)),
            b'-' => current.push('\n'),
            _ => panic!("bad separator in {line:?}"),
        }
    }
    assert!(current.is_empty(), "unfinished multi-line reply");
    replies
}

/// The last line of each reply (it carries the enhanced code of a multi-line reply).
fn final_lines(output: &[u8]) -> Vec<String> {
    replies(output)
        .into_iter()
        .map(|r| r.rsplit('\n').next().unwrap_or_default().to_string())
        .collect()
}

/// A tiny deterministic PRNG (xorshift64*), so that no dependency is needed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A script: input bytes, the expected reply prefixes (matched against the last line of each
/// reply, in order, greeting first) and the expected messages.
struct Script {
    name: &'static str,
    input: &'static [u8],
    replies: &'static [&'static str],
    messages: &'static [(&'static [u8], Outcome)],
    closed: bool,
}

const SCRIPTS: &[Script] = &[
    Script {
        name: "ehlo session with dot-stuffing",
        input: b"EHLO client.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n\
                 Subject: hi\r\n\r\n..leading dot\r\n.\r\nQUIT\r\n",
        replies: &["220 mx.test ESMTP", "250 CHUNKING", "250 2.1.0", "250 2.1.5", "354",
                   "250 2.0.0 Ok: queued as Q1", "221 2.0.0"],
        messages: &[(b"Subject: hi\r\n\r\n.leading dot\r\n", Outcome::Queued)],
        closed: true,
    },
    Script {
        name: "postfix leniency: HELO, bare LF, space after colon, unqualified",
        input: b"HELO client\nMAIL FROM: <a@b.test>\nRCPT TO:root\nDATA\nline\n..dot\n\xe9t\xe9\n.\nQUIT\n",
        replies: &["220", "250 mx.test", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0", "221"],
        messages: &[(b"line\n.dot\n\xe9t\xe9\n", Outcome::Queued)],
        closed: true,
    },
    Script {
        name: "no HELO needed; pipelined messages, RSET, NOOP",
        input: b"MAIL FROM:<>\r\nRCPT TO:<x@y>\r\nDATA\r\none\r\n.\r\nNOOP\r\nRSET\r\n\
                 MAIL FROM:<p@q>\r\nRCPT TO:<x@y>\r\nRSET\r\nRCPT TO:<x@y>\r\n\
                 MAIL FROM:<p@q>\r\nRCPT TO:<x@y>\r\nRCPT TO:<z@y>\r\nDATA\r\ntwo\r\n.\r\nQUIT\r\n",
        replies: &["220", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0 Ok: queued as Q1",
                   "250 2.0.0", "250 2.0.0", "250 2.1.0", "250 2.1.5", "250 2.0.0",
                   "503 5.5.1", "250 2.1.0", "250 2.1.5", "250 2.1.5", "354",
                   "250 2.0.0 Ok: queued as Q2", "221"],
        messages: &[(b"one\r\n", Outcome::Queued), (b"two\r\n", Outcome::Queued)],
        closed: true,
    },
    Script {
        name: "every error reply",
        input: b"\r\nNO\x01OP\r\nFROB x\r\nVRFY root\r\nEXPN staff\r\nSTARTTLS\r\nAUTH PLAIN x\r\n\
                 HELP\r\nRCPT TO:<a@b>\r\nDATA\r\nHELO\r\nMAIL FROM:<a b>\r\nMAIL FROM:<a@b> FOO=1\r\n\
                 MAIL FROM:<a@b> BODY=9BIT\r\nMAIL FROM:<a@b> SIZE=101\r\nMAIL FROM:<a@b> SIZE=100\r\n\
                 MAIL FROM:<a@b>\r\nHELO again\r\nDATA\r\nMAIL FROM:<a@b>\r\nDATA\r\nRCPT TO:<>\r\nRCPT TO:<a@b>\r\nRCPT TO:<c@b>\r\n\
                 RCPT TO:<d@b>\r\nDATA x\r\nRSET x\r\nQUIT x\r\nRSET\r\nQUIT\r\nNOOP\r\n",
        replies: &["220", "500 5.5.2", "500 5.5.2", "502 5.5.1", "252 2.5.0", "502 5.5.1",
                   "502 5.5.1", "502 5.5.1", "214", "503 5.5.1", "503 5.5.1", "501 5.5.4",
                   "501 5.1.7", "555 5.5.4", "501 5.5.4", "552 5.3.4", "250 2.1.0", "503 5.5.1",
                   "250 mx.test", "503 5.5.1", "250 2.1.0", "554 5.5.1", "501 5.1.3", "250 2.1.5", "250 2.1.5", "452 4.5.3",
                   "501 5.5.4", "501 5.5.4", "221 2.0.0"],
        messages: &[],
        closed: true,
    },
    Script {
        name: "an HTTP request is answered and the connection closed, its body never read",
        input: b"POST / HTTP/1.1\r\nHost: 127.0.0.1:25\r\nContent-Length: 60\r\n\r\n\
                 MAIL FROM:<evil@x>\r\nRCPT TO:<root>\r\nDATA\r\nSubject: forged\r\n\r\n.\r\n",
        replies: &["220", "221 2.7.0 Error: I can break rules, too. Goodbye."],
        messages: &[],
        closed: true,
    },
    Script {
        name: "the 20th refused command ends the session",
        input: b"FROB\r\nFROB\r\nFROB\r\nFROB\r\nFROB\r\nFROB\r\nFROB\r\nFROB\r\nFROB\r\nFROB\r\n\
                 NOOP\r\nFROB\r\nFROB\r\nFROB\r\nFROB\r\nFROB\r\nFROB\r\nFROB\r\nFROB\r\nFROB\r\n\
                 FROB\r\nNOOP\r\n",
        replies: &["220", "502", "502", "502", "502", "502", "502", "502", "502", "502", "502",
                   "250 2.0.0", "502", "502", "502", "502", "502", "502", "502", "502", "502",
                   "502", "421 4.7.0 mx.test Error: too many errors"],
        messages: &[],
        closed: true,
    },
    Script {
        name: "commit failure gets 452, never 250; the session goes on",
        input: b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nFAIL-COMMIT\r\n.\r\n\
                 MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nfine\r\n.\r\nQUIT\r\n",
        replies: &["220", "250", "250", "354", "452 4.3.1", "250", "250", "354",
                   "250 2.0.0 Ok: queued as Q1", "221"],
        messages: &[(b"FAIL-COMMIT\r\n", Outcome::CommitFailed), (b"fine\r\n", Outcome::Queued)],
        closed: true,
    },
    Script {
        name: "oversized DATA is read to its end, then 552",
        input: b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n\
                 0123456789012345678901234567890123456789\r\n\
                 0123456789012345678901234567890123456789\r\n\
                 0123456789012345678901234567890123456789\r\n\
                 QUIT\r\n.\r\nNOOP\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nsmall\r\n.\r\nQUIT\r\n",
        replies: &["220", "250", "250", "354", "552 5.3.4", "250 2.0.0", "250", "250", "354",
                   "250 2.0.0 Ok: queued as Q1", "221"],
        messages: &[(b"", Outcome::Aborted), (b"small\r\n", Outcome::Queued)],
        closed: true,
    },
    Script {
        name: "a message of exactly the limit is accepted",
        input: b"MAIL FROM:<a@b> SIZE=100\r\nRCPT TO:<c@d>\r\nDATA\r\n\
                 012345678901234567890123456789012345678901234567\r\n\
                 012345678901234567890123456789012345678901234567\r\n.\r\n",
        replies: &["220", "250", "250", "354", "250 2.0.0 Ok: queued as Q1"],
        messages: &[(b"012345678901234567890123456789012345678901234567\r\n\
                       012345678901234567890123456789012345678901234567\r\n", Outcome::Queued)],
        closed: false,
    },
    Script {
        name: "command line too long: 500, rest of line discarded, session goes on",
        input: b"NOOP 4567890123456789012345678901234567890123456789012345678901234567890123456\r\n\
                 NOOP 45678901234567890123456789012345678901234567890123456789012345678901234567\r\n\
                 MAIL FROM:<a@b> xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n\
                 RCPT TO:<c@d>\r\nNOOP\r\n",
        replies: &["220", "250 2.0.0", "500 5.5.2 Line too long", "500 5.5.2 Line too long",
                   "503 5.5.1", "250 2.0.0"],
        messages: &[],
        closed: false,
    },
    Script {
        name: "NUL and 8-bit bytes in commands and data",
        input: b"EHLO \xff\xfe\r\nMAIL FROM:<a\x00@b>\r\nMAIL FROM:<\xc3\xa9@b>\r\nRCPT TO:<\xff@b>\r\n\
                 RCPT TO:<c@d>\r\nDATA\r\n\x00\x00\xff\r\n.\x00\r\n.\r\n\x00QUIT\r\nQUIT\r\n",
        replies: &["220", "250 CHUNKING", "501 5.1.7", "250 2.1.0", "501 5.1.3", "250 2.1.5",
                   "354", "250 2.0.0", "500 5.5.2", "221"],
        messages: &[(b"\x00\x00\xff\r\n\x00\r\n", Outcome::Queued)],
        closed: true,
    },
    Script {
        name: "BDAT chunks, counted exactly, in one transaction and after a DATA one",
        input: b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 7\r\n.\r\nx\r\n.BDAT 12 LAST\r\nQUIT\r\nRSET\r\n\
                 MAIL FROM:<a@b> BODY=BINARYMIME\r\nRCPT TO:<c@d>\r\nDATA\r\nBDAT 0 LAST\r\nQUIT\r\n",
        replies: &["220", "250 CHUNKING", "250 2.1.0", "250 2.1.5", "250 2.0.0 Ok: 7 bytes",
                   "250 2.0.0 Ok: queued as Q1", "250", "250", "503 5.5.1",
                   "250 2.0.0 Ok: queued as Q2", "221"],
        messages: &[(b".\r\nx\r\n.QUIT\r\nRSET\r\n", Outcome::Queued), (b"", Outcome::Queued)],
        closed: true,
    },
    Script {
        name: "refused BDATs still have their octets read",
        input: b"BDAT 6\r\nQUIT\r\nMAIL FROM:<a@b>\r\nBDAT 6 LAST\r\nRSET\r\nRCPT TO:<c@d>\r\nBDAT 0\r\nBDAT 5 LAST\r\nhello\
                 QUIT\r\n",
        replies: &["220", "503 5.5.1", "250 2.1.0", "554 5.5.1", "250 2.1.5", "250 2.0.0 Ok: 0 bytes",
                   "250 2.0.0 Ok: queued as Q1", "221"],
        messages: &[(b"hello", Outcome::Queued)],
        closed: true,
    },
    Script {
        name: "oversized BDAT: aborted at the crossing, 552 after the chunk, then in sync",
        input: b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 60\r\n\
                 012345678901234567890123456789012345678901234567890123456789BDAT 60 LAST\r\n\
                 012345678901234567890123456789012345678901234567890123456789NOOP\r\n",
        replies: &["220", "250", "250", "250 2.0.0 Ok: 60 bytes", "552 5.3.4", "250 2.0.0"],
        messages: &[(b"", Outcome::Aborted)],
        closed: false,
    },
    Script {
        name: "RSET, EHLO and QUIT between chunks abort the message",
        input: b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 2\r\nabRSET\r\n\
                 MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 2\r\nefEHLO x\r\nRCPT TO:<x@y>\r\nDATA\r\n\
                 MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 2\r\nghMAIL FROM:<a@b>\r\nRCPT TO:<x@y>\r\nDATA\r\nQUIT\r\nNOOP\r\n",
        replies: &["220", "250", "250", "250 2.0.0 Ok: 2 bytes", "250 2.0.0",
                   "250", "250", "250 2.0.0 Ok: 2 bytes", "250 CHUNKING", "503 5.5.1", "503 5.5.1",
                   "250", "250", "250 2.0.0 Ok: 2 bytes", "503 5.5.1", "503 5.5.1", "503 5.5.1",
                   "221"],
        messages: &[(b"", Outcome::Aborted), (b"", Outcome::Aborted), (b"", Outcome::Aborted)],
        closed: true,
    },
    Script {
        // The size of the chunk is unknown, so its octets would be read as commands (here a
        // RCPT): the message is aborted and the session ends, as with Postfix.
        name: "a malformed BDAT between chunks aborts the message and ends the session",
        input: b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 2\r\ncdBDAT two\r\nRCPT TO:<c@d>\r\n",
        replies: &["220", "250", "250", "250 2.0.0 Ok: 2 bytes", "521 5.5.4"],
        messages: &[(b"", Outcome::Aborted)],
        closed: true,
    },
    Script {
        name: "a malformed BDAT outside a message ends the session too",
        input: b"EHLO c\r\nBDAT 3 LAST X\r\nabcQUIT\r\n",
        replies: &["220", "250 CHUNKING", "521 5.5.4 Syntax: BDAT count [LAST]"],
        messages: &[],
        closed: true,
    },
    Script {
        // A blind pipeliner whose DATA was refused: its message must not be read as commands.
        name: "a message header line where a command belongs ends the session",
        input: b"EHLO c\r\nMAIL FROM:<a@b> SIZE=999999999999\r\nRCPT TO:<root>\r\nDATA\r\n\
                 Subject: rejected\r\n\r\nRCPT TO:<x@y>\r\n.\r\n",
        replies: &["220", "250 CHUNKING", "552 5.3.4", "503 5.5.1", "503 5.5.1",
                   "221 2.7.0 Error: I can break rules, too. Goodbye."],
        messages: &[],
        closed: true,
    },
    Script {
        name: "a line not starting with a letter ends the session",
        input: b"NOOP\r\n<html>\r\nNOOP\r\n",
        replies: &["220", "250 2.0.0", "221 2.7.0"],
        messages: &[],
        closed: true,
    },
    Script {
        name: "DSN and AUTH parameters are taken and ignored; malformed ones refused",
        input: b"MAIL FROM:<a@b> RET=HDRS ENVID=job42 AUTH=<>\r\n\
                 RCPT TO:<c@d> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;c@d\r\n\
                 RCPT TO:<e@d> NOTIFY=SOMETIMES\r\nDATA\r\nx\r\n.\r\n\
                 MAIL FROM:<a@b> RET=SOME\r\nMAIL FROM:<a@b> X-FOO=1\r\nQUIT\r\n",
        replies: &["220", "250 2.1.0", "250 2.1.5", "501 5.5.4", "354", "250 2.0.0 Ok: queued as Q1",
                   "501 5.5.4", "555 5.5.4", "221"],
        messages: &[(b"x\r\n", Outcome::Queued)],
        closed: true,
    },
    Script {
        name: "input ends inside a message",
        input: b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\npartial\r\n.",
        replies: &["220", "250", "250", "354"],
        messages: &[(b"partial\r\n", Outcome::Unfinished)],
        closed: false,
    },
    Script {
        name: "dot-unstuffing corner cases",
        input: b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n.\rx\r\n...\r\n. \r\na.\r\n\r.\r\n.\n",
        replies: &["220", "250", "250", "354", "250 2.0.0 Ok: queued as Q1"],
        messages: &[(b"\rx\r\n..\r\n \r\na.\r\n\r.\r\n", Outcome::Queued)],
        closed: false,
    },
];

fn check_script(script: &Script, transcript: &Transcript) {
    let lines = final_lines(&transcript.output);
    assert_eq!(
        lines.len(),
        script.replies.len(),
        "{}: replies {lines:#?}",
        script.name
    );
    for (line, expected) in lines.iter().zip(script.replies) {
        assert!(
            line.starts_with(expected),
            "{}: got {line:?}, expected {expected:?}; all replies {lines:#?}",
            script.name
        );
    }
    let messages: Vec<(&[u8], Outcome)> = transcript
        .messages
        .iter()
        .map(|m| (m.data.as_slice(), m.outcome))
        .collect();
    assert_eq!(messages, script.messages, "{}: messages", script.name);
    assert_eq!(transcript.closed, script.closed, "{}: closed", script.name);
}

#[test]
fn scripts_whole() {
    for script in SCRIPTS {
        let transcript = run(small_config(), [script.input]);
        check_script(script, &transcript);
    }
}

#[test]
fn scripts_split_at_every_offset() {
    for script in SCRIPTS {
        let whole = run(small_config(), [script.input]);
        for at in 0..=script.input.len() {
            let (a, b) = script.input.split_at(at);
            let split = run(small_config(), [a, b]);
            assert_eq!(split, whole, "{}: split at {at}", script.name);
        }
    }
}

#[test]
fn scripts_byte_at_a_time() {
    for script in SCRIPTS {
        let whole = run(small_config(), [script.input]);
        let bytes = run(small_config(), script.input.chunks(1));
        assert_eq!(bytes, whole, "{}: byte at a time", script.name);
    }
}

#[test]
fn scripts_at_random_offsets() {
    let mut rng = XorShift(0x5eed_1234_abcd_0001);
    for script in SCRIPTS {
        let whole = run(small_config(), [script.input]);
        for _ in 0..50 {
            let chunks = random_chunks(&mut rng, script.input);
            assert_eq!(run(small_config(), chunks), whole, "{}", script.name);
        }
    }
}

fn random_chunks<'i>(rng: &mut XorShift, input: &'i [u8]) -> Vec<&'i [u8]> {
    let mut chunks = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        let take = 1 + rng.below(rest.len().min(16));
        let (chunk, tail) = rest.split_at(take);
        chunks.push(chunk);
        rest = tail;
    }
    chunks
}

/// A client speaking one command at a time, as most real clients do.
struct Client {
    session: Session,
    out: Vec<u8>,
    events: Vec<String>,
}

impl Client {
    fn new(config: SessionConfig) -> Client {
        let mut session = Session::new(config);
        let mut out = Vec::new();
        session.greeting(&mut out);
        let greeting = String::from_utf8(std::mem::take(&mut out)).expect("UTF-8 greeting");
        assert_eq!(greeting, "220 mx.test ESMTP\r\n");
        Client {
            session,
            out,
            events: Vec::new(),
        }
    }

    /// Sends raw bytes; commits any message at once as `QID`; returns the reply text.
    fn send(&mut self, bytes: &[u8]) -> String {
        let mut pos = 0;
        loop {
            let (used, event) = self.session.feed(&bytes[pos..], &mut self.out);
            pos += used;
            match event {
                Event::NeedInput => break,
                Event::MessageEnd => {
                    self.events.push("end".to_string());
                    self.session.committed(Ok("QID"), &mut self.out);
                }
                Event::MessageStart(tx) => self.events.push(format!(
                    "start helo={} from=<{}> to={}",
                    tx.helo,
                    tx.sender,
                    tx.recipients.join(",")
                )),
                Event::Data(data) => self
                    .events
                    .push(format!("data {}", String::from_utf8_lossy(data))),
                Event::MessageAbort => self.events.push("abort".to_string()),
                Event::Waiting => panic!("waiting after a commit"),
                Event::Close => {
                    self.events.push("close".to_string());
                    break;
                }
            }
        }
        String::from_utf8(std::mem::take(&mut self.out)).expect("UTF-8 replies")
    }

    /// Sends one command line; asserts one reply starting with `expected`.
    fn cmd(&mut self, line: &str, expected: &str) -> String {
        let reply = self.send(format!("{line}\r\n").as_bytes());
        let replies = replies(reply.as_bytes());
        assert_eq!(replies.len(), 1, "{line:?} got {reply:?}");
        let last = replies[0].rsplit('\n').next().unwrap_or_default();
        assert!(
            reply.starts_with(expected) || last.starts_with(expected),
            "{line:?}: got {reply:?}, expected {expected:?}"
        );
        reply
    }
}

fn config() -> SessionConfig {
    SessionConfig {
        hostname: "mx.test".to_string(),
        banner: String::new(),
        max_message_size: 1000,
        max_recipients: 3,
        max_line_length: 512,
    }
}

#[test]
fn ehlo_advertises_exactly_our_extensions() {
    let mut client = Client::new(config());
    let reply = client.cmd("EHLO client.test", "250");
    assert_eq!(
        reply,
        "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n\
         250-ENHANCEDSTATUSCODES\r\n250 CHUNKING\r\n"
    );
    assert_eq!(client.cmd("HELO client.test", "250"), "250 mx.test\r\n");
}

#[test]
fn transaction_carries_helo_sender_and_recipients() {
    let mut client = Client::new(config());
    client.cmd("EHLO laptop.test", "250");
    client.cmd("MAIL FROM:<>", "250 2.1.0");
    client.cmd("RCPT TO:root", "250 2.1.5");
    client.cmd(
        "RCPT TO: <j\u{f6}rg@b\u{fc}cher.test> NOTIFY=NEVER",
        "250 2.1.5",
    );
    client.cmd("RCPT TO:<@relay.test:owner@x.test>", "250 2.1.5");
    client.cmd("RCPT TO:<fourth@x.test>", "452 4.5.3");
    client.cmd("DATA", "354");
    client.send(b"hi\r\n.\r\n");
    assert_eq!(
        client.events,
        [
            "start helo=laptop.test from=<> to=root,j\u{f6}rg@b\u{fc}cher.test,owner@x.test",
            "data hi\r\n",
            "end"
        ]
    );
}

#[test]
fn mail_without_helo_has_an_empty_helo() {
    let mut client = Client::new(config());
    client.cmd("MAIL FROM:root", "250");
    client.cmd("RCPT TO:root", "250");
    assert_eq!(client.send(b"BDAT 2 LAST\r\n"), "");
    assert_eq!(client.send(b"ok"), "250 2.0.0 Ok: queued as QID\r\n");
    assert_eq!(
        client.events,
        ["start helo= from=<root> to=root", "data ok", "end"]
    );
}

#[test]
fn waiting_consumes_nothing_until_committed() {
    let mut session = Session::new(config());
    let mut out = Vec::new();
    let input = b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nbody\r\n.\r\nNOOP\r\nQUIT\r\n";
    let mut pos = 0;
    let mut events = Vec::new();
    loop {
        let (used, event) = session.feed(&input[pos..], &mut out);
        pos += used;
        let end = event == Event::MessageEnd;
        events.push(format!("{event:?}"));
        if end {
            break;
        }
    }
    assert_eq!(&input[pos..], b"NOOP\r\nQUIT\r\n");
    assert!(session.is_waiting());
    for _ in 0..3 {
        assert_eq!(session.feed(&input[pos..], &mut out), (0, Event::Waiting));
    }
    let before = String::from_utf8_lossy(&out).into_owned();
    assert!(!before.contains("250 2.0.0"), "{before}");
    session.committed(Ok("4F2A9C"), &mut out);
    assert!(!session.is_waiting());
    assert_eq!(session.feed(&input[pos..], &mut out), (12, Event::Close));
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.ends_with("354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok: queued as 4F2A9C\r\n250 2.0.0 Ok\r\n221 2.0.0 Bye\r\n"),
        "{text}"
    );
    // After Close the session stays closed and consumes nothing.
    assert_eq!(session.feed(b"NOOP\r\n", &mut out), (0, Event::Close));
    assert!(events[0].starts_with("MessageStart"), "{events:?}");
}

#[test]
fn failed_commit_is_452_never_250() {
    let mut session = Session::new(config());
    let mut out = Vec::new();
    let input = b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n.\r\n";
    let mut pos = 0;
    loop {
        let (used, event) = session.feed(&input[pos..], &mut out);
        pos += used;
        if event == Event::MessageEnd {
            break;
        }
        assert_ne!(event, Event::NeedInput, "no MessageEnd");
    }
    out.clear();
    session.committed(Err("No space left on device"), &mut out);
    assert_eq!(out, b"452 4.3.1 Insufficient system storage\r\n");
    // A second (stray) commit changes nothing.
    out.clear();
    session.committed(Ok("X"), &mut out);
    assert!(out.is_empty());
}

#[test]
fn queue_id_and_hostname_cannot_inject_lines() {
    let mut session = Session::new(SessionConfig {
        hostname: "evil\r\n250 host".to_string(),
        banner: String::new(),
        ..config()
    });
    let mut out = Vec::new();
    session.greeting(&mut out);
    assert_eq!(out, b"220 evil250host ESMTP\r\n");
    out.clear();
    let input = b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 0 LAST\r\n";
    let mut pos = 0;
    loop {
        let (used, event) = session.feed(&input[pos..], &mut out);
        pos += used;
        if event == Event::MessageEnd {
            break;
        }
        assert_ne!(event, Event::NeedInput, "no MessageEnd");
    }
    out.clear();
    session.committed(Ok("ID\r\n221 bye"), &mut out);
    assert_eq!(out, b"250 2.0.0 Ok: queued as ID221bye\r\n");
}

#[test]
fn line_length_limit_is_exact_and_counts_the_line_end() {
    let limit = 512;
    for (ending, extra) in [("\r\n", 2), ("\n", 1)] {
        // "NOOP " + padding + ending == limit bytes: accepted.
        let fits = format!("NOOP {}{ending}", "x".repeat(limit - 5 - extra));
        assert_eq!(fits.len(), limit);
        let over = format!("NOOP {}{ending}", "x".repeat(limit - 4 - extra));
        let mut client = Client::new(config());
        assert_eq!(client.send(fits.as_bytes()), "250 2.0.0 Ok\r\n");
        assert_eq!(client.send(over.as_bytes()), "500 5.5.2 Line too long\r\n");
        assert_eq!(client.send(b"NOOP\r\n"), "250 2.0.0 Ok\r\n");
    }
}

#[test]
fn endless_line_uses_bounded_memory_and_gets_one_reply() {
    let mut session = Session::new(config());
    let mut out = Vec::new();
    let block = vec![b'A'; 4096];
    for _ in 0..256 {
        assert_eq!(
            session.feed(&block, &mut out),
            (block.len(), Event::NeedInput)
        );
        assert!(session.buffered() < 512);
    }
    assert_eq!(out, b"500 5.5.2 Line too long\r\n");
    out.clear();
    assert_eq!(
        session.feed(b"AAA\r\nNOOP\r\n", &mut out),
        (11, Event::NeedInput)
    );
    assert_eq!(out, b"250 2.0.0 Ok\r\n");
}

#[test]
fn huge_message_is_streamed_then_refused_with_552() {
    let mut session = Session::new(config());
    let mut out = Vec::new();
    let mut events = Vec::new();
    let mut data_bytes = 0;
    let header = b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n".to_vec();
    let line = b"0123456789012345678901234567890123456789012345678901234567890123456789\r\n";
    let mut chunks = vec![header];
    for _ in 0..10_000 {
        chunks.push(line.to_vec());
    }
    chunks.push(b".\r\nNOOP\r\n".to_vec());
    for chunk in &chunks {
        let mut pos = 0;
        loop {
            let (used, event) = session.feed(&chunk[pos..], &mut out);
            pos += used;
            match event {
                Event::NeedInput => break,
                Event::Data(bytes) => data_bytes += bytes.len(),
                other => events.push(format!("{other:?}")),
            }
        }
    }
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events[0].starts_with("MessageStart"));
    assert_eq!(events[1], "MessageAbort");
    assert!(data_bytes <= 1000, "{data_bytes} bytes handed out");
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.ends_with("354 End data with <CR><LF>.<CR><LF>\r\n552 5.3.4 Error: message file too big\r\n250 2.0.0 Ok\r\n"),
        "{text}"
    );
}

#[test]
fn in_message_tracks_the_open_spool_file() {
    let mut session = Session::new(config());
    let mut out = Vec::new();
    assert!(!session.in_message());
    assert!(matches!(
        session.feed(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 3\r\n", &mut out),
        (_, Event::MessageStart(_))
    ));
    assert!(session.in_message());
    assert_eq!(session.feed(b"ab", &mut out), (2, Event::Data(b"ab")));
    assert!(session.in_message());
    assert_eq!(session.feed(b"c", &mut out), (1, Event::Data(b"c")));
    assert_eq!(session.feed(b"", &mut out), (0, Event::NeedInput));
    assert!(
        session.in_message(),
        "between chunks the message is still open"
    );
    assert_eq!(
        session.feed(b"RSET\r\n", &mut out),
        (6, Event::MessageAbort)
    );
    assert!(!session.in_message());
    assert_eq!(session.feed(b"", &mut out), (0, Event::NeedInput));
}

#[test]
fn quit_inside_a_chunked_message_aborts_then_closes() {
    let mut session = Session::new(config());
    let mut out = Vec::new();
    let input = b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 1\r\nxQUIT\r\n";
    let mut pos = 0;
    let mut events = Vec::new();
    loop {
        let (used, event) = session.feed(&input[pos..], &mut out);
        pos += used;
        let close = event == Event::Close;
        events.push(format!("{event:?}"));
        if close || events.len() > 10 {
            break;
        }
    }
    assert_eq!(events[1..], ["Data([120])", "MessageAbort", "Close"]);
    assert!(String::from_utf8_lossy(&out).ends_with("221 2.0.0 Bye\r\n"));
}

/// The smtp-proto fuzzer's idea: random input drawn mostly from the SMTP alphabet reaches
/// deep states. Nothing may panic, the contract checks in `run` must hold, every reply must be
/// well-formed, and a random split must not change anything.
#[test]
fn random_input_smoke() {
    const TOKENS: &[&[u8]] = &[
        b"HELO x\r\n",
        b"EHLO y\r\n",
        b"MAIL FROM:<a@b>\r\n",
        b"MAIL FROM:<> SIZE=50 BODY=8BITMIME\r\n",
        b"MAIL FROM:<a@b> BODY=BINARYMIME\r\n",
        b"RCPT TO:<c@d>\r\n",
        b"RCPT TO:root\n",
        b"DATA\r\n",
        b"BDAT 7\r\n",
        b"BDAT 3 LAST\r\n",
        b"BDAT 0 LAST\r\n",
        b"BDAT x\r\n",
        b".\r\n",
        b".\n",
        b"..x\r\n",
        b"\r\n",
        b"\n",
        b"\r",
        b".",
        b"RSET\r\n",
        b"NOOP\r\n",
        b"VRFY x\r\n",
        b"FAIL-COMMIT\r\n",
        b"0123456789012345678901234567890123456789012345678901234567890123456789",
    ];
    let mut rng = XorShift(0x0dd_ba11_cafe_f00d);
    for _ in 0..2000 {
        let mut input = Vec::new();
        for _ in 0..rng.below(60) {
            match rng.below(10) {
                0 => {
                    for _ in 0..1 + rng.below(12) {
                        input.push(rng.next() as u8);
                    }
                }
                1 if rng.below(8) == 0 => input.extend_from_slice(b"QUIT\r\n"),
                _ => input.extend_from_slice(TOKENS[rng.below(TOKENS.len())]),
            }
        }
        let whole = run(small_config(), [input.as_slice()]);
        replies(&whole.output);
        let chunks = random_chunks(&mut rng, &input);
        assert_eq!(
            run(small_config(), chunks),
            whole,
            "input {:?}",
            String::from_utf8_lossy(&input)
        );
    }
}

/// Purely random bytes, in random chunks, with a tiny line limit.
#[test]
fn random_bytes_never_panic() {
    let mut rng = XorShift(0x1234_5678_9abc_def1);
    for _ in 0..500 {
        let length = rng.below(2048);
        let input: Vec<u8> = (0..length).map(|_| rng.next() as u8).collect();
        let config = SessionConfig {
            max_line_length: 1 + rng.below(40),
            ..small_config()
        };
        let chunks = random_chunks(&mut rng, &input);
        let transcript = run(config, chunks);
        replies(&transcript.output);
    }
}

/// The Symfony Mailer `SmtpTransport` dialogue over `sendmail -bs` (sendmail-compat.md §5):
/// HELO, then per message MAIL, RCPT, DATA with dot-stuffed data; RSET, NOOP; QUIT.
#[test]
fn stdio_serves_a_symfony_like_session() {
    let script: &[u8] = b"HELO [127.0.0.1]\r\n\
        MAIL FROM:<app@example.test>\r\nRCPT TO:<owner@example.test>\r\nDATA\r\n\
        From: app@example.test\r\nSubject: one\r\n\r\nfirst body\r\n..stuffed\r\n.\r\n\
        RSET\r\nNOOP\r\n\
        MAIL FROM:<app@example.test>\r\nRCPT TO:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n\
        Subject: two\r\n\r\nsecond\r\n.\r\n\
        QUIT\r\nNOOP\r\n";
    let mut input = Cursor::new(script.to_vec());
    let mut output = Vec::new();
    let mut submitted = Vec::new();
    let accepted = stdio::serve(config(), &mut input, &mut output, |tx, bytes| {
        submitted.push((tx, bytes));
        Ok(format!("ID{}", submitted.len()))
    })
    .expect("serve");
    assert_eq!(accepted, 2);
    assert_eq!(
        String::from_utf8(output).expect("UTF-8"),
        "220 mx.test ESMTP\r\n250 mx.test\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n\
         354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok: queued as ID1\r\n\
         250 2.0.0 Ok\r\n250 2.0.0 Ok\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n\
         354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok: queued as ID2\r\n221 2.0.0 Bye\r\n"
    );
    assert_eq!(submitted.len(), 2);
    assert_eq!(submitted[0].0.helo, "[127.0.0.1]");
    assert_eq!(submitted[0].0.sender, "app@example.test");
    assert_eq!(submitted[0].0.recipients, ["owner@example.test"]);
    assert_eq!(
        submitted[0].1,
        b"From: app@example.test\r\nSubject: one\r\n\r\nfirst body\r\n.stuffed\r\n"
    );
    assert_eq!(
        submitted[1].0.recipients,
        ["a@example.test", "b@example.test"]
    );
    assert_eq!(submitted[1].1, b"Subject: two\r\n\r\nsecond\r\n");
    // QUIT ended the session: the NOOP after it was not read as a command.
    assert_eq!(input.position() as usize, script.len());
}

/// A reader that hands out its bytes a few at a time, like a pipe, with interruptions.
struct Trickle {
    data: Vec<u8>,
    pos: usize,
    calls: usize,
}

impl std::io::Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.calls += 1;
        if self.calls % 5 == 0 {
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        let n = (self.calls % 7 + 1)
            .min(buf.len())
            .min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[test]
fn stdio_handles_failures_oversize_and_eof() {
    let script = b"EHLO x\nMAIL FROM:<a@b>\nRCPT TO:<c@d>\nDATA\nrefuse me\n.\n\
        MAIL FROM:<a@b>\nRCPT TO:<c@d>\nDATA\n"
        .iter()
        .copied()
        .chain(std::iter::repeat_n(b'x', 5000))
        .chain(
            b"\n.\nMAIL FROM:<a@b>\nRCPT TO:<c@d>\nBDAT 4 LAST\nbdat"
                .iter()
                .copied(),
        )
        .collect::<Vec<u8>>();
    let mut input = Trickle {
        data: script,
        pos: 0,
        calls: 0,
    };
    let mut output = Vec::new();
    let mut seen = Vec::new();
    let accepted = stdio::serve(config(), &mut input, &mut output, |tx, bytes| {
        seen.push(bytes.clone());
        if bytes.starts_with(b"refuse") {
            Err("spool unwritable".to_string())
        } else {
            Ok(format!("{}", tx.recipients.len()))
        }
    })
    .expect("serve");
    assert_eq!(accepted, 1);
    assert_eq!(seen, [b"refuse me\n".to_vec(), b"bdat".to_vec()]);
    let lines = final_lines(&output);
    let codes: Vec<&str> = lines.iter().map(|l| &l[..9]).collect();
    assert_eq!(
        codes,
        [
            "220 mx.te",
            "250 CHUNK",
            "250 2.1.0",
            "250 2.1.5",
            "354 End d",
            "452 4.3.1",
            "250 2.1.0",
            "250 2.1.5",
            "354 End d",
            "552 5.3.4",
            "250 2.1.0",
            "250 2.1.5",
            "250 2.0.0"
        ]
    );
}

/// The canned replies of the host match DESIGN.md's table.
#[test]
fn host_replies_match_the_design_table() {
    use smtp_bridge::smtp::replies;
    let table = [
        (replies::NOT_ALLOWED, "554 5.7.1 "),
        (replies::SHUTTING_DOWN, "421 4.3.2 "),
        (replies::IDLE_TIMEOUT, "421 4.4.2 "),
        (replies::SESSION_TIMEOUT, "421 4.4.2 "),
    ];
    for (reply, code) in table {
        assert!(reply.starts_with(code), "{reply:?}");
        assert_eq!(replies_of(reply).len(), 1, "{reply:?}");
    }
}

fn replies_of(text: &str) -> Vec<String> {
    replies(text.as_bytes())
}

/// One message as `stdio::serve` submitted it.
type Submitted = (Transaction, Vec<u8>);

/// Serves one SMTP session on a loopback socket with `stdio::serve` (a `TcpStream` is a
/// `Read` and a `Write`), so that real clients can talk to the engine. Returns the port and
/// a handle yielding what was submitted.
fn serve_one_connection() -> (u16, std::thread::JoinHandle<Vec<Submitted>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        let mut reader = stream.try_clone().expect("clone stream");
        let mut writer = stream;
        let mut submitted = Vec::new();
        let mut config = config();
        config.max_message_size = 10_000_000;
        stdio::serve(config, &mut reader, &mut writer, |tx, bytes| {
            submitted.push((tx, bytes));
            Ok(format!("T{}", submitted.len()))
        })
        .expect("serve");
        submitted
    });
    (port, handle)
}

#[test]
fn lettre_client() {
    use lettre::{Message as Mail, SmtpTransport, Transport};
    let (port, server) = serve_one_connection();
    let mailer = SmtpTransport::builder_dangerous("127.0.0.1")
        .port(port)
        .hello_name(lettre::transport::smtp::extension::ClientId::Domain(
            "lettre.test".to_string(),
        ))
        .build();
    let body = "first\n.dot line\nbl\u{e5}b\u{e6}r\n".to_string();
    let mail = Mail::builder()
        .from("app@example.test".parse().expect("from"))
        .to("owner@example.test".parse().expect("to"))
        .bcc("hidden@example.test".parse().expect("bcc"))
        .subject("lettre says hello")
        .body(body)
        .expect("build mail");
    let response = mailer.send(&mail).expect("lettre send");
    assert!(response.is_positive());
    assert_eq!(
        response.message().collect::<Vec<_>>(),
        ["2.0.0 Ok: queued as T1"]
    );
    drop(mailer);
    let submitted = server.join().expect("server thread");
    assert_eq!(submitted.len(), 1);
    let (tx, bytes) = &submitted[0];
    assert_eq!(tx.helo, "lettre.test");
    assert_eq!(tx.sender, "app@example.test");
    assert_eq!(tx.recipients, ["owner@example.test", "hidden@example.test"]);
    let text = String::from_utf8_lossy(bytes);
    assert!(text.contains("Subject: lettre says hello\r\n"), "{text}");
    assert!(!text.contains("\r\n..dot"), "still stuffed: {text}");
    assert!(bytes.ends_with(b"\r\n"), "{text}");
}

#[test]
fn python_smtplib_client() {
    if !common::require_tool("python3") {
        return;
    }
    let (port, server) = serve_one_connection();
    let script = format!(
        r#"
import smtplib
s = smtplib.SMTP("127.0.0.1", {port}, local_hostname="py.test")
code, text = s.ehlo()
assert code == 250 and b"CHUNKING" in text, (code, text)
s.sendmail("a@example.test", ["c@example.test", "root"], b"Subject: py\r\n\r\n.dot\r\nplain\r\n")
s.sendmail("", ["c@example.test"], "Subject: utf8\r\n\r\nj\u00f6rg\r\n".encode(),
           mail_options=["SMTPUTF8", "BODY=8BITMIME"])
code, text = s.verify("root")
assert code == 252, (code, text)
try:
    s.sendmail("a@example.test", ["c@example.test"], b"x" * 20000000)
    raise SystemExit("oversized message accepted")
except smtplib.SMTPSenderRefused as e:
    assert e.smtp_code == 552, e
s.quit()
"#
    );
    let status = std::process::Command::new("python3")
        .args(["-c", &script])
        .status()
        .expect("run python3");
    assert!(status.success(), "smtplib script failed");
    let submitted = server.join().expect("server thread");
    assert_eq!(submitted.len(), 2);
    assert_eq!(submitted[0].0.recipients, ["c@example.test", "root"]);
    assert_eq!(submitted[0].1, b"Subject: py\r\n\r\n.dot\r\nplain\r\n");
    assert_eq!(submitted[1].0.sender, "");
    assert_eq!(
        submitted[1].1,
        "Subject: utf8\r\n\r\nj\u{f6}rg\r\n".as_bytes()
    );
}

#[test]
fn curl_client() {
    if !common::require_tool("curl") {
        return;
    }
    let dir = common::TestDir::new("engine-curl");
    let file = dir.join("mail.txt");
    // CRLF: curl sends the file as it is and stuffs dots only after CRLF. (An LF-only file
    // with a lone-dot line would end the message there, with us as with Postfix, which
    // accepts a bare-LF `.` line from local clients.)
    std::fs::write(
        &file,
        "Subject: curl\r\n\r\nline one\r\n.\r\nafter a lone dot\r\n",
    )
    .expect("write");
    let (port, server) = serve_one_connection();
    let output = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "30",
            &format!("smtp://127.0.0.1:{port}/curl.test"),
        ])
        .args([
            "--mail-from",
            "a@example.test",
            "--mail-rcpt",
            "c@example.test",
        ])
        .arg("--upload-file")
        .arg(&file)
        .output()
        .expect("run curl");
    assert!(
        output.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let submitted = server.join().expect("server thread");
    assert_eq!(submitted.len(), 1);
    assert_eq!(submitted[0].0.helo, "curl.test");
    // curl stuffed the lone dot; it comes back unstuffed.
    assert_eq!(
        submitted[0].1,
        b"Subject: curl\r\n\r\nline one\r\n.\r\nafter a lone dot\r\n"
    );
}

/// Dot-stuffs `message` as a client does (RFC 5321 §4.5.2) and terminates it.
fn stuffed(message: &[u8]) -> Vec<u8> {
    let mut data = Vec::with_capacity(message.len() + 16);
    let mut line_start = true;
    for &byte in message {
        if line_start && byte == b'.' {
            data.push(b'.');
        }
        data.push(byte);
        line_start = byte == b'\n';
    }
    if !line_start {
        data.extend_from_slice(b"\r\n");
    }
    data.extend_from_slice(b".\r\n");
    data
}

/// Every message of the shared corpus goes through DATA (dot-stuffed, split at random) and
/// through BDAT (random chunk sizes) and comes out byte for byte as it went in.
#[test]
fn corpus_messages_round_trip_through_data_and_bdat() {
    let corpus = common::shared_dir().join("corpus");
    let mut files = Vec::new();
    let mut dirs = vec![corpus];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read corpus dir") {
            let path = entry.expect("corpus entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "eml") {
                files.push(path);
            }
        }
    }
    files.sort();
    assert!(files.len() >= 50, "corpus not found: {files:?}");
    let config = SessionConfig {
        max_message_size: 1 << 24,
        max_line_length: 1000,
        ..small_config()
    };
    let mut rng = XorShift(0xc0ff_ee00_1234_5678);
    for file in &files {
        let message = std::fs::read(file).expect("read corpus file");
        let mut expected = message.clone();
        if !message.is_empty() && !message.ends_with(b"\n") {
            expected.extend_from_slice(b"\r\n");
        }
        let mut data_script = b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n".to_vec();
        data_script.extend_from_slice(&stuffed(&message));
        let mut bdat_script = b"MAIL FROM:<a@b> BODY=BINARYMIME\r\nRCPT TO:<c@d>\r\n".to_vec();
        let mut rest = message.as_slice();
        loop {
            let take = rng.below(rest.len().max(1) * 2).min(rest.len());
            let (chunk, tail) = rest.split_at(take);
            let last = tail.is_empty();
            let command = format!(
                "BDAT {}{}\r\n",
                chunk.len(),
                if last { " LAST" } else { "" }
            );
            bdat_script.extend_from_slice(command.as_bytes());
            bdat_script.extend_from_slice(chunk);
            rest = tail;
            if last {
                break;
            }
        }
        for (script, want) in [(&data_script, &expected), (&bdat_script, &message)] {
            let whole = run(config.clone(), [script.as_slice()]);
            assert_eq!(whole.messages.len(), 1, "{}", file.display());
            assert_eq!(
                whole.messages[0].outcome,
                Outcome::Queued,
                "{}",
                file.display()
            );
            assert!(
                whole.messages[0].data == *want,
                "{} changed in transit",
                file.display()
            );
            for _ in 0..3 {
                let chunks = random_chunks(&mut rng, script);
                assert_eq!(run(config.clone(), chunks), whole, "{}", file.display());
            }
        }
    }
}

mod common;
/// swaks, a real SMTP client, talks to the built `sendmail -bs` over a pipe (sendmail-compat.md
/// §6), lock-step and with PIPELINING; each message must reach the stand-in bridge once, its
/// leading-dot line unstuffed.
#[test]
fn swaks_over_sendmail_bs() {
    if !common::require_tool("swaks") {
        return;
    }
    let dir = common::TestDir::new("engine-swaks");
    let bridge = common::StandInBridge::start();
    let config = common::write_config(&dir.path, &bridge.url, "");
    let pipe = format!("{} -bs", common::sendmail_bin().display());
    for (n, extra) in [(1, None), (2, Some("--pipeline"))] {
        let subject = format!("swaks over -bs {n}");
        let mut command = std::process::Command::new("swaks");
        command
            .env("SMTP_BRIDGE_CONFIG", &config)
            .args(["--pipe", &pipe, "--from", "app@example.test"])
            .args(["--to", "owner@example.test,second@example.test"])
            .args(["--header", &format!("Subject: {subject}")])
            .args(["--body", "first line\n.leading dot\nlast line"]);
        if let Some(extra) = extra {
            command.arg(extra);
        }
        let output = command.output().expect("run swaks");
        let transcript = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "swaks failed: {transcript}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(transcript.contains("220 testhost ESMTP"), "{transcript}");
        assert!(transcript.contains("250-PIPELINING"), "{transcript}");
        assert!(
            transcript.contains("250 2.0.0 Ok: queued as "),
            "{transcript}"
        );
        assert!(transcript.contains("221 2.0.0 Bye"), "{transcript}");
        let got = bridge.wait_for(n, std::time::Duration::from_secs(20));
        let digest = &got[n - 1].reply;
        assert!(digest.contains(&subject), "{digest}");
        assert!(
            digest.contains("\n.leading dot") && !digest.contains("..leading"),
            "{digest}"
        );
    }
    assert!(bridge.rejections().is_empty(), "{:?}", bridge.rejections());
}

#[test]
fn the_banner_is_the_greeting() {
    let mut session = Session::new(SessionConfig {
        banner: "mx.test ESMTP Postfix (Debian/GNU)".into(),
        ..config()
    });
    let mut out = Vec::new();
    session.greeting(&mut out);
    assert_eq!(out, b"220 mx.test ESMTP Postfix (Debian/GNU)\r\n");
    // Whatever a caller passes, the greeting stays one line.
    let mut session = Session::new(SessionConfig {
        banner: "mx.test\r\n250 forged".into(),
        ..config()
    });
    let mut out = Vec::new();
    session.greeting(&mut out);
    assert_eq!(out, b"220 mx.test250 forged\r\n");
}
