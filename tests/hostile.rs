//! Hostile clients against the real daemon binary on loopback: a thousand idle connections
//! and byte-at-a-time senders while others are served, a 10 MiB line without a newline,
//! 100,000 pipelined commands in one write, BDAT chunks that lie about their size, NUL bytes,
//! invalid UTF-8 in addresses, and messages built to hurt a parser (10,000 headers, multipart
//! nested 1,000 deep, a 20 MiB base64 part).
//!
//! Each test checks the reply codes, that the daemon's peak memory (VmHWM in
//! /proc/PID/status) stays bounded, and that afterwards the daemon is alive, still serves a
//! fresh client and never logged a panic. Every count and wait is bounded; no test asserts
//! a speed. The figures each test prints (`hostile: …`) go into FUZZING.md.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{StandInBridge, TestDir};

/// Bound for things that take milliseconds when all is well.
const SOON: Duration = Duration::from_secs(30);
/// Bound for deliveries of large messages (the stand-in bridge takes one at a time).
const SLOW: Duration = Duration::from_secs(180);
/// The daemon's peak resident memory must stay below this, whatever the clients do.
const MEMORY_BOUND_KIB: u64 = 64 * 1024;

// ---- the daemon under test ------------------------------------------------------------

/// A running daemon, killed on drop.
struct Daemon {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Daemon {
    /// Starts the daemon on a free loopback port with `extra` TOML lines in its config.
    fn start(dir: &TestDir, bridge: &StandInBridge, extra: &str) -> Daemon {
        let port = common::free_port();
        let config = common::write_config(
            &dir.path,
            &bridge.url,
            &format!("listen = [\"127.0.0.1:{port}\"]\n{extra}"),
        );
        let log = dir.join("daemon.log");
        let child = Command::new(common::daemon_bin())
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("daemon log"))
            .spawn()
            .expect("start smtp_bridge");
        let mut d = Daemon { child, port, log };
        let listening = common::wait_until(SOON, || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
                || d.child.try_wait().ok().flatten().is_some()
        });
        assert!(
            listening && d.child.try_wait().ok().flatten().is_none(),
            "daemon not listening:\n{}",
            d.log_text()
        );
        d
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A field of /proc/PID/status in KiB (`VmHWM`, `VmRSS`).
    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("daemon /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc status"))
    }

    /// CPU time (user + system) the daemon used so far, for the figures (never asserted).
    fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the parenthesised command name; utime and stime are the 12th and
        // 13th of them, in clock ticks (USER_HZ, 100 on Linux).
        let ticks: u64 = stat
            .rsplit_once(')')
            .map(|(_, rest)| {
                rest.split_whitespace()
                    .skip(11)
                    .take(2)
                    .filter_map(|f| f.parse::<u64>().ok())
                    .sum()
            })
            .unwrap_or(0);
        ticks as f64 / 100.0
    }

    /// Open file descriptors of the daemon.
    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Checks the peak memory bound and returns the peak (KiB) for the figures.
    fn assert_memory_bounded(&self, what: &str) -> u64 {
        let hwm = self.status_kib("VmHWM");
        eprintln!(
            "hostile: {what}: daemon VmHWM {hwm} KiB, CPU {:.2} s",
            self.cpu_seconds()
        );
        assert!(
            hwm < MEMORY_BOUND_KIB,
            "{what}: daemon peak RSS {hwm} KiB, bound {MEMORY_BOUND_KIB} KiB"
        );
        hwm
    }

    /// The daemon is alive, a fresh client gets a greeting and a NOOP answer, and nothing
    /// panicked.
    fn assert_healthy(&mut self) {
        assert!(
            self.child.try_wait().expect("try_wait").is_none(),
            "daemon exited:\n{}",
            self.log_text()
        );
        let mut c = greeted(self.port);
        c.expect("NOOP", 250);
        c.expect("QUIT", 221);
        let log = self.log_text();
        assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- a raw SMTP client ----------------------------------------------------------------

/// A line-level SMTP client over a blocking socket.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_read_timeout(Some(SOON)).unwrap();
        Client {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
        }
    }

    /// Reads one (possibly multi-line) reply: its code and full text.
    fn reply(&mut self) -> (u16, String) {
        let mut text = String::new();
        loop {
            let mut line = Vec::new();
            let n = self
                .reader
                .read_until(b'\n', &mut line)
                .expect("read reply");
            assert!(n > 0, "connection closed; got so far: {text:?}");
            let line = String::from_utf8_lossy(&line).into_owned();
            text.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                let code = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
                return (code, text);
            }
        }
    }

    fn send(&mut self, raw: &[u8]) {
        self.writer.write_all(raw).expect("send");
    }

    /// Sends a raw command line (CRLF added) and returns the reply.
    fn cmd_raw(&mut self, line: &[u8]) -> (u16, String) {
        let mut raw = line.to_vec();
        raw.extend_from_slice(b"\r\n");
        self.send(&raw);
        self.reply()
    }

    fn expect(&mut self, line: &str, code: u16) -> String {
        let (c, text) = self.cmd_raw(line.as_bytes());
        assert_eq!(c, code, "{line:?} -> {text:?}");
        text
    }

    /// Whether the server closed the connection (EOF or reset within the read timeout).
    fn closed(&mut self) -> bool {
        let mut buf = [0u8; 64];
        matches!(self.reader.read(&mut buf), Ok(0) | Err(_))
    }

    /// MAIL, RCPT root, DATA, the message, the final dot; returns the final reply.
    fn message(&mut self, message: &[u8]) -> (u16, String) {
        self.expect("MAIL FROM:<sender@example.org>", 250);
        self.expect("RCPT TO:<root>", 250);
        self.expect("DATA", 354);
        self.send(message);
        self.send(b"\r\n.\r\n");
        self.reply()
    }
}

fn greeted(port: u16) -> Client {
    let mut c = Client::connect(port);
    let (code, text) = c.reply();
    assert_eq!(code, 220, "{text}");
    c.expect("EHLO client.test", 250);
    c
}

fn queued(reply: &(u16, String)) {
    assert_eq!(reply.0, 250, "{:?}", reply.1);
    assert!(reply.1.contains("queued as"), "{:?}", reply.1);
}

fn simple(subject: &str, body: &str) -> String {
    format!("From: a@example.org\r\nTo: root\r\nSubject: {subject}\r\n\r\n{body}")
}

/// Everything in the spool's queue directory, temporary files included.
fn queue_entries(dir: &TestDir) -> Vec<String> {
    std::fs::read_dir(dir.join("spool").join("queue"))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Messages in the spool's queue directory (not the `.tmp.*` files of messages still
/// being received).
fn queued_files(dir: &TestDir) -> usize {
    std::fs::read_dir(dir.join("spool").join("queue"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .count()
        })
        .unwrap_or(0)
}

/// Raises this process's soft RLIMIT_NOFILE to at least `want` (the daemon, started
/// afterwards, inherits it). Fails the test when the hard limit does not allow it.
fn raise_nofile(want: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    assert!(
        hard >= want,
        "RLIMIT_NOFILE hard limit {hard} is below the {want} this test needs"
    );
    if soft < want {
        setrlimit(Resource::RLIMIT_NOFILE, want.max(soft), hard).expect("setrlimit");
    }
}

// ---- connections ----------------------------------------------------------------------

/// The slow senders' session, sent one byte at a time: everything up to (not including)
/// the end of the data, then the rest once the main thread says so.
fn slow_session(n: usize) -> (Vec<u8>, Vec<u8>) {
    let head = format!(
        "EHLO slow{n}.test\r\nMAIL FROM:<slow{n}@example.org>\r\nRCPT TO:<root>\r\nDATA\r\n{}",
        simple(&format!("slow sender {n}"), "typed one byte at a time")
    );
    (head.into_bytes(), b"\r\n.\r\nQUIT\r\n".to_vec())
}

#[test]
fn thousand_idle_connections_and_byte_at_a_time_senders_do_not_stop_others() {
    const IDLE: usize = 1000;
    const SLOW_SENDERS: usize = 4;
    const NORMAL: usize = 10;
    raise_nofile(2048);
    let bridge = StandInBridge::start();
    let dir = TestDir::new("hostile-idle");
    let mut d = Daemon::start(&dir, &bridge, "max_connections = 1100\nidle_timeout = 300");
    let base_fds = d.fds();

    // A thousand clients connect, take their greeting, and say nothing more.
    let mut idle: Vec<Client> = Vec::with_capacity(IDLE);
    for i in 0..IDLE {
        let mut c = Client::connect(d.port);
        let (code, text) = c.reply();
        assert_eq!(code, 220, "idle client {i}: {text}");
        idle.push(c);
    }
    // Each got 220, not 421: the daemon holds all of them (its descriptors say so too).
    let fds = d.fds();
    eprintln!("hostile: {IDLE} idle connections held, daemon fds {base_fds} -> {fds}");
    assert!(fds >= IDLE, "daemon has {fds} fds open for {IDLE} clients");

    // Senders that type one byte at a time (each byte its own write and TCP segment),
    // then stop before the end of their data until the normal clients are done.
    let (started_tx, started_rx) = mpsc::channel();
    let mut release = Vec::new();
    let port = d.port;
    let slow: Vec<_> = (0..SLOW_SENDERS)
        .map(|n| {
            let (go_tx, go_rx) = mpsc::channel::<()>();
            release.push(go_tx);
            let started = started_tx.clone();
            thread::spawn(move || {
                let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
                stream.set_nodelay(true).unwrap();
                stream.set_read_timeout(Some(SOON)).unwrap();
                let mut writer = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                let (head, tail) = slow_session(n);
                let mut sent = 0;
                for byte in &head {
                    writer.write_all(std::slice::from_ref(byte)).unwrap();
                    sent += 1;
                    if sent == 10 {
                        started.send(()).unwrap();
                    }
                    thread::sleep(Duration::from_millis(1));
                }
                go_rx.recv().unwrap();
                for byte in &tail {
                    writer.write_all(std::slice::from_ref(byte)).unwrap();
                }
                // Greeting, EHLO (multi-line), MAIL, RCPT, DATA, the queued reply, QUIT.
                let mut codes = Vec::new();
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    if line.as_bytes().get(3) == Some(&b' ') {
                        codes.push(line[..3].to_string());
                    }
                    line.clear();
                }
                codes
            })
        })
        .collect();
    for _ in 0..SLOW_SENDERS {
        started_rx.recv_timeout(SOON).expect("slow sender started");
    }

    // Meanwhile, ordinary clients are greeted, and their messages acknowledged, within the
    // client's read timeout.
    for n in 0..NORMAL {
        let mut c = greeted(d.port);
        queued(&c.message(simple(&format!("normal {n}"), "served").as_bytes()));
        c.expect("QUIT", 221);
    }
    let normal_done_while_slow_in_progress = slow.iter().all(|t| !t.is_finished());
    assert!(
        normal_done_while_slow_in_progress,
        "a slow sender finished before it was released"
    );
    for go in release {
        go.send(()).unwrap();
    }
    for t in slow {
        let codes = t.join().expect("slow sender");
        assert_eq!(
            codes,
            ["220", "250", "250", "250", "354", "250", "221"],
            "slow sender replies"
        );
    }
    let got = bridge.wait_for(NORMAL + SLOW_SENDERS, SOON);
    assert_eq!(got.len(), NORMAL + SLOW_SENDERS);
    for n in 0..SLOW_SENDERS {
        assert!(
            got.iter()
                .any(|r| r.reply.contains(&format!("slow sender {n}"))),
            "slow sender {n} not delivered"
        );
    }
    // The idle clients are all still connected (nobody was dropped to make room).
    for c in idle.iter_mut().take(10) {
        c.send(b"NOOP\r\n");
        assert_eq!(c.reply().0, 250);
    }
    d.assert_memory_bounded("1000 idle + 4 byte-at-a-time + 10 normal clients");
    d.assert_healthy();
    drop(idle);
}

#[test]
fn ten_mib_line_without_newline_gets_500_and_memory_stays_bounded() {
    const LINE: usize = 10 << 20;
    let bridge = StandInBridge::start();
    let dir = TestDir::new("hostile-line");
    let mut d = Daemon::start(&dir, &bridge, "");
    let mut c = greeted(d.port);
    // Write the line from another thread: the daemon answers while it is still arriving.
    let mut writer = c.writer.try_clone().unwrap();
    let sender = thread::spawn(move || {
        let chunk = vec![b'A'; 64 * 1024];
        let mut sent = 0;
        while sent < LINE {
            writer.write_all(&chunk).unwrap();
            sent += chunk.len();
        }
        sent
    });
    let (code, text) = c.reply();
    assert_eq!(code, 500, "{text}");
    assert!(text.contains("5.5.2"), "{text}");
    assert_eq!(sender.join().unwrap(), LINE);
    // The rest of the line is dropped up to its end; the session goes on, with one reply
    // for the whole line.
    c.send(b"\r\n");
    c.expect("NOOP", 250);
    queued(&c.message(simple("after the long line", "still here").as_bytes()));
    c.expect("QUIT", 221);
    bridge.wait_for(1, SOON);
    d.assert_memory_bounded("10 MiB line");
    d.assert_healthy();
}

#[test]
fn hundred_thousand_pipelined_commands_in_one_write_are_answered_in_order() {
    const N: usize = 100_000;
    let bridge = StandInBridge::start();
    let dir = TestDir::new("hostile-flood");
    let mut d = Daemon::start(&dir, &bridge, "");
    let mut c = greeted(d.port);
    // NOOPs, with a VRFY (252) every 1,000th and a HELP (214) every 7,777th, so that the
    // order of the replies can be checked, then a whole transaction and QUIT.
    let mut script = Vec::with_capacity(N * 8);
    let mut expected = Vec::with_capacity(N + 8);
    for i in 1..=N {
        if i % 7777 == 0 {
            script.extend_from_slice(b"HELP\r\n");
            expected.push(214);
        } else if i % 1000 == 0 {
            script.extend_from_slice(format!("VRFY user{i}\r\n").as_bytes());
            expected.push(252);
        } else {
            script.extend_from_slice(b"NOOP\r\n");
            expected.push(250);
        }
    }
    script.extend_from_slice(b"MAIL FROM:<flood@example.org>\r\nRCPT TO:<root>\r\nDATA\r\n");
    script.extend_from_slice(simple("after the flood", "x").as_bytes());
    script.extend_from_slice(b"\r\n.\r\nQUIT\r\n");
    expected.extend([250, 250, 354, 250, 221]);
    // One write of the whole script. It does not fit in the socket buffers, so the daemon
    // must keep reading while this client is not reading its replies yet: the write
    // completes only because the daemon bounds its output and pushes back.
    let mut writer = c.writer.try_clone().unwrap();
    let bytes = script.len();
    let sender = thread::spawn(move || writer.write_all(&script).map(|_| bytes));
    let mut codes = Vec::with_capacity(expected.len());
    for _ in 0..expected.len() {
        codes.push(c.reply().0);
    }
    let sent = sender.join().unwrap().expect("flood written");
    eprintln!("hostile: flood of {sent} bytes, {} replies", codes.len());
    let first_wrong = codes.iter().zip(&expected).position(|(a, b)| a != b);
    assert_eq!(first_wrong, None, "reply out of order");
    assert!(c.closed());
    bridge.wait_for(1, SOON);
    d.assert_memory_bounded("100,000 pipelined commands");
    d.assert_healthy();
}

#[test]
fn bdat_chunks_that_lie_about_their_size() {
    let bridge = StandInBridge::start();
    let dir = TestDir::new("hostile-bdat");
    let mut d = Daemon::start(&dir, &bridge, "max_message_size = 1048576");

    // Declares 14 octets, sends 23: the chunk is the first 14 (a header line), the surplus
    // is read as a command line and refused.
    let mut c = greeted(d.port);
    c.expect("MAIL FROM:<liar@example.org>", 250);
    c.expect("RCPT TO:<root>", 250);
    c.send(b"BDAT 14\r\nSubject: lie\r\nWORLD!!\r\n");
    let (code, text) = c.reply();
    assert_eq!(code, 250, "{text}");
    assert!(text.contains("14 octets"), "{text}");
    let (code, text) = c.reply();
    assert!(
        code == 500 || code == 502,
        "surplus bytes as a command: {text}"
    );
    let body = b"\r\nthe rest of the message\r\n";
    c.send(format!("BDAT {} LAST\r\n", body.len()).as_bytes());
    c.send(body);
    queued(&c.reply());
    let got = bridge.wait_for(1, SOON);
    assert!(
        got[0].reply.starts_with("Subject: lie\n"),
        "{}",
        got[0].reply
    );
    assert!(
        got[0].reply.contains("the rest of the message"),
        "{}",
        got[0].reply
    );
    assert!(!got[0].reply.contains("WORLD"), "{}", got[0].reply);

    // Sizes that are not numbers, or do not fit in 64 bits: 501, the session goes on.
    for bad in [
        "BDAT",
        "BDAT -5",
        "BDAT 5x",
        "BDAT 0x10",
        "BDAT 18446744073709551616",
        "BDAT 99999999999999999999999999",
        "BDAT 5 FIRST",
    ] {
        c.expect("MAIL FROM:<liar@example.org>", 250);
        c.expect("RCPT TO:<root>", 250);
        let text = c.expect(bad, 501);
        assert!(text.contains("5.5.4"), "{bad}: {text}");
        c.expect("RSET", 250);
    }

    // Declares more than max_message_size and sends it all: 552 once the declared octets
    // have been read, nothing queued, and the session goes on.
    // The first message leaves the queue once the bridge has it.
    assert!(common::wait_until(SOON, || queued_files(&dir) == 0));
    c.expect("MAIL FROM:<liar@example.org>", 250);
    c.expect("RCPT TO:<root>", 250);
    let big = 2 << 20;
    c.send(format!("BDAT {big} LAST\r\n").as_bytes());
    let mut writer = c.writer.try_clone().unwrap();
    let sender = thread::spawn(move || writer.write_all(&vec![b'x'; big]));
    let (code, text) = c.reply();
    assert_eq!(code, 552, "{text}");
    assert!(text.contains("5.3.4"), "{text}");
    sender.join().unwrap().expect("big chunk written");
    c.expect("NOOP", 250);
    assert_eq!(queued_files(&dir), 0, "an oversized chunk was queued");

    // Declares 1,000 octets of a LAST chunk, sends 10 and hangs up: nothing is queued.
    c.expect("MAIL FROM:<liar@example.org>", 250);
    c.expect("RCPT TO:<root>", 250);
    c.send(b"BDAT 1000 LAST\r\n0123456789");
    c.writer.shutdown(Shutdown::Both).unwrap();
    drop(c);
    // A declared size that never arrives, from a client that stays: the daemon waits for
    // it without reading anything else as a command, and serves others meanwhile.
    let mut waiting = greeted(d.port);
    waiting.expect("MAIL FROM:<liar@example.org>", 250);
    waiting.expect("RCPT TO:<root>", 250);
    waiting.send(b"BDAT 1000000 LAST\r\nQUIT\r\n");
    let mut other = greeted(d.port);
    queued(&other.message(simple("honest", "x").as_bytes()));
    other.expect("QUIT", 221);
    let got = bridge.wait_for(2, SOON);
    assert!(got[1].reply.contains("honest"), "{}", got[1].reply);
    assert!(common::wait_until(SOON, || queued_files(&dir) == 0));
    assert_eq!(
        bridge.received().len(),
        2,
        "a truncated chunk was delivered"
    );
    // When the waiting client leaves, its unfinished chunk is discarded like the one of the
    // client that hung up: no temporary file is left behind.
    drop(waiting);
    assert!(
        common::wait_until(SOON, || queue_entries(&dir).is_empty()),
        "left in the queue: {:?}",
        queue_entries(&dir)
    );
    d.assert_memory_bounded("lying BDAT sizes");
    d.assert_healthy();
}

#[test]
fn nul_bytes_in_commands_and_data() {
    let bridge = StandInBridge::start();
    let dir = TestDir::new("hostile-nul");
    let mut d = Daemon::start(&dir, &bridge, "");
    let mut c = greeted(d.port);
    // A NUL inside a verb or an address is refused; the session goes on.
    let (code, text) = c.cmd_raw(b"NO\0OP");
    assert!(code == 500 || code == 502, "NUL in a verb: {text}");
    let (code, text) = c.cmd_raw(b"\0");
    assert!(code == 500 || code == 502, "a lone NUL: {text}");
    let (code, text) = c.cmd_raw(b"MAIL FROM:<a\0b@example.org>");
    assert_eq!(code, 501, "NUL in a sender: {text}");
    c.expect("MAIL FROM:<nul@example.org>", 250);
    let (code, text) = c.cmd_raw(b"RCPT TO:<ro\0ot>");
    assert_eq!(code, 501, "NUL in a recipient: {text}");
    c.expect("RCPT TO:<root>", 250);
    c.expect("DATA", 354);
    // NUL bytes in the header and the body: accepted, and the digest shows no NUL.
    c.send(b"From: a@example.org\r\nSubject: nul\0subject\r\n\r\nbody\0with\0\0nuls\r\n.\r\n");
    queued(&c.reply());
    c.expect("QUIT", 221);
    let got = bridge.wait_for(1, SOON);
    let digest = &got[0].reply;
    assert!(!digest.contains('\0'), "{digest:?}");
    assert!(digest.contains("body"), "{digest:?}");
    d.assert_memory_bounded("NUL bytes");
    d.assert_healthy();
}

#[test]
fn invalid_utf8_in_addresses_is_refused_and_the_session_goes_on() {
    let bridge = StandInBridge::start();
    let dir = TestDir::new("hostile-utf8");
    let mut d = Daemon::start(&dir, &bridge, "");
    let mut c = greeted(d.port);
    for sender in [
        &b"MAIL FROM:<\xff@example.org>"[..],
        b"MAIL FROM:<a@\xc3(.example.org> SMTPUTF8",
        b"MAIL FROM:<\xed\xa0\x80@example.org>",
        b"MAIL FROM:<\xc0\xaf@example.org>",
    ] {
        let (code, text) = c.cmd_raw(sender);
        assert_eq!(code, 501, "{sender:?}: {text}");
        assert!(text.contains("5.1.7"), "{text}");
    }
    c.expect("MAIL FROM:<jörg@example.org> SMTPUTF8", 250);
    for rcpt in [&b"RCPT TO:<r\xf5\x80\x80\x80>"[..], b"RCPT TO:<\xe2\x82>"] {
        let (code, text) = c.cmd_raw(rcpt);
        assert_eq!(code, 501, "{rcpt:?}: {text}");
        assert!(text.contains("5.1.3"), "{text}");
    }
    c.expect("RCPT TO:<root>", 250);
    c.expect("DATA", 354);
    c.send(b"Subject: utf8 \xff\xfe\r\n\r\nbody \xc3\x28 bytes\r\n.\r\n");
    queued(&c.reply());
    // A HELO name is not an address: either answer will do, as long as nothing breaks.
    let (code, text) = c.cmd_raw(b"EHLO \xff\xfe.example");
    assert!(
        code == 250 || code == 501,
        "EHLO with invalid UTF-8: {text}"
    );
    c.expect("QUIT", 221);
    let got = bridge.wait_for(1, SOON);
    assert!(
        got[0].reply.contains("jörg@example.org"),
        "{}",
        got[0].reply
    );
    d.assert_memory_bounded("invalid UTF-8");
    d.assert_healthy();
}

// ---- messages built to hurt a parser --------------------------------------------------

/// Sends `message` in one transaction (streamed in 64 KiB writes) and expects 250.
fn send_message(port: u16, message: &[u8]) {
    let mut c = greeted(port);
    c.expect(
        &format!("MAIL FROM:<sender@example.org> SIZE={}", message.len()),
        250,
    );
    c.expect("RCPT TO:<root>", 250);
    c.expect("DATA", 354);
    for chunk in message.chunks(64 * 1024) {
        c.send(chunk);
    }
    c.send(b"\r\n.\r\n");
    queued(&c.reply());
    c.expect("QUIT", 221);
}

#[test]
fn ten_thousand_headers_are_digested() {
    let bridge = StandInBridge::start();
    let dir = TestDir::new("hostile-headers");
    let mut d = Daemon::start(&dir, &bridge, "");
    let mut m = String::from("From: a@example.org\r\nTo: root\r\nSubject: many headers\r\n");
    for i in 0..10_000 {
        m.push_str(&format!("X-Header-{i}: value {i}\r\n"));
    }
    for i in 0..1000 {
        // Also many recipients in many To headers.
        m.push_str(&format!("To: user{i}@example.org\r\n"));
    }
    m.push_str("\r\nthe body after ten thousand headers\r\n");
    let start = Instant::now();
    send_message(d.port, m.as_bytes());
    let got = bridge.wait_for(1, SOON);
    eprintln!(
        "hostile: {} bytes of headers delivered after {:?}",
        m.len(),
        start.elapsed()
    );
    assert!(got[0].reply.contains("many headers"), "{}", got[0].reply);
    assert!(
        got[0].reply.contains("the body after ten thousand headers"),
        "{}",
        got[0].reply
    );
    d.assert_memory_bounded("10,000 headers");
    d.assert_healthy();
}

#[test]
fn multipart_nested_a_thousand_deep_is_digested() {
    const DEPTH: usize = 1000;
    let bridge = StandInBridge::start();
    let dir = TestDir::new("hostile-nested");
    let mut d = Daemon::start(&dir, &bridge, "");

    // multipart/mixed inside multipart/mixed, a thousand levels, text at the bottom.
    let mut m = String::from(
        "From: a@example.org\r\nTo: root\r\nSubject: deep multipart\r\nMIME-Version: 1.0\r\n",
    );
    for i in 0..DEPTH {
        m.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n"
        ));
    }
    m.push_str("Content-Type: text/plain\r\n\r\nat the bottom of the multipart well\r\n");
    for i in (0..DEPTH).rev() {
        m.push_str(&format!("--b{i}--\r\n"));
    }
    send_message(d.port, m.as_bytes());

    // And attached messages a thousand deep (message/rfc822 inside message/rfc822).
    let mut n = String::from(
        "From: a@example.org\r\nTo: root\r\nSubject: deep rfc822\r\nMIME-Version: 1.0\r\n",
    );
    for i in 0..DEPTH {
        n.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=\"r{i}\"\r\n\r\n--r{i}\r\nContent-Type: message/rfc822\r\n\r\nSubject: level {i}\r\n"
        ));
    }
    n.push_str("Content-Type: text/plain\r\n\r\nat the bottom of the rfc822 well\r\n");
    for i in (0..DEPTH).rev() {
        n.push_str(&format!("--r{i}--\r\n"));
    }
    send_message(d.port, n.as_bytes());

    let got = bridge.wait_for(2, SOON);
    assert!(got[0].reply.contains("deep multipart"), "{}", got[0].reply);
    assert!(got[1].reply.contains("deep rfc822"), "{}", got[1].reply);
    eprintln!(
        "hostile: nested {DEPTH} deep: digests of {} and {} chars",
        got[0].reply.len(),
        got[1].reply.len()
    );
    d.assert_memory_bounded("multipart and rfc822 nested 1,000 deep");
    d.assert_healthy();
}

#[test]
fn twenty_mib_base64_part_is_digested_in_bounded_memory() {
    const PART: usize = 20 << 20;
    let bridge = StandInBridge::start();
    let dir = TestDir::new("hostile-base64");
    let mut d = Daemon::start(&dir, &bridge, "max_message_size = 33554432");
    let mut m = String::from(
        "From: a@example.org\r\nTo: root\r\nSubject: huge base64\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"XYZ\"\r\n\r\n--XYZ\r\n\
         Content-Type: text/plain\r\n\r\nsee the attachment\r\n--XYZ\r\n\
         Content-Type: application/octet-stream; name=\"big.bin\"\r\n\
         Content-Disposition: attachment; filename=\"big.bin\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n",
    );
    // 76-character base64 lines (57 bytes of data each) up to PART bytes of base64 text.
    let line = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0\r\n";
    m.reserve(PART + 64);
    while m.len() < PART {
        m.push_str(line);
    }
    m.push_str("--XYZ--\r\n");
    send_message(d.port, m.as_bytes());
    let got = bridge.wait_for(1, SLOW);
    let digest = &got[0].reply;
    assert!(digest.contains("huge base64"), "{digest}");
    assert!(digest.contains("see the attachment"), "{digest}");
    assert!(digest.contains("big.bin"), "{digest}");
    assert!(
        !digest.contains("QUJDREVGR0hJ"),
        "base64 dumped into the digest"
    );
    eprintln!(
        "hostile: {} bytes message with a base64 part digested",
        m.len()
    );
    d.assert_memory_bounded("20 MiB base64 part");
    d.assert_healthy();
}
