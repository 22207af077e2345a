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

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::assert_contains;
use common::daemon::{queued, setup, simple, Client, Daemon};

/// Bound for waits on things that take milliseconds when all is well (more generous than
/// the harness's own: these tests load the daemon and the machine).
const SOON: Duration = Duration::from_secs(30);
/// Bound for deliveries of large messages (the stand-in bridge takes one at a time).
const SLOW: Duration = Duration::from_secs(180);
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
    let (bridge, mut d) = setup("hostile-idle", "max_connections = 1100\nidle_timeout = 300");
    let base_fds = d.fds();

    // A thousand clients connect, take their greeting, and say nothing more.
    let mut idle: Vec<Client> = Vec::with_capacity(IDLE);
    for i in 0..IDLE {
        let mut c = d.connect();
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
    let addr = d.addr();
    let slow: Vec<_> = (0..SLOW_SENDERS)
        .map(|n| {
            let (go_tx, go_rx) = mpsc::channel::<()>();
            release.push(go_tx);
            let started = started_tx.clone();
            thread::spawn(move || {
                let stream = TcpStream::connect(addr).expect("connect");
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
        let mut c = d.greeted();
        queued(&c.message(simple(&format!("normal {n}"), "served")));
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
    let (bridge, mut d) = setup("hostile-line", "");
    let mut c = d.greeted();
    // Write the line from another thread: the daemon answers while it is still arriving.
    let mut writer = c.writer();
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
    queued(&c.message(simple("after the long line", "still here")));
    c.expect("QUIT", 221);
    bridge.wait_for(1, SOON);
    d.assert_memory_bounded("10 MiB line");
    d.assert_healthy();
}

#[test]
fn hundred_thousand_pipelined_commands_in_one_write_are_answered_in_order() {
    const N: usize = 100_000;
    let (bridge, mut d) = setup("hostile-flood", "");
    let mut c = d.greeted();
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
    let mut writer = c.writer();
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
    let (bridge, mut d) = setup("hostile-bdat", "max_message_size = 1048576");

    // Declares 14 octets, sends 23: the chunk is the first 14 (a header line), the surplus
    // is read as a command line and refused.
    let mut c = d.greeted();
    c.envelope("liar@example.org", &["root"]);
    c.send(b"BDAT 14\r\nSubject: lie\r\nWORLD!!\r\n");
    let (code, text) = c.reply();
    assert_eq!(code, 250, "{text}");
    assert!(text.contains("Ok: 14 bytes"), "{text}");
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
    assert_contains(&got[0].reply, &["the rest of the message"]);
    assert!(!got[0].reply.contains("WORLD"), "{}", got[0].reply);

    // Sizes that are not numbers, or do not fit in 64 bits: where the chunk ends is unknown,
    // so the session ends with 521 (as Postfix's), before a chunk's octets are read as
    // commands.
    for bad in [
        "BDAT",
        "BDAT -5",
        "BDAT 5x",
        "BDAT 0x10",
        "BDAT 18446744073709551616",
        "BDAT 99999999999999999999999999",
        "BDAT 5 FIRST",
    ] {
        let mut b = d.greeted();
        b.envelope("liar@example.org", &["root"]);
        b.send(format!("{bad}\r\nRSET\r\n").as_bytes());
        let (code, text) = b.reply();
        assert_eq!(code, 521, "{bad}: {text}");
        assert!(text.contains("5.5.4"), "{bad}: {text}");
        assert!(b.closed(), "{bad}: the session went on");
    }

    // Declares more than max_message_size and sends it all: 552 once the declared octets
    // have been read, nothing queued, and the session goes on.
    // The first message leaves the queue once the bridge has it.
    assert!(common::wait_until(SOON, || d.queued_files() == 0));
    c.envelope("liar@example.org", &["root"]);
    let big = 2 << 20;
    c.send(format!("BDAT {big} LAST\r\n").as_bytes());
    let mut writer = c.writer();
    let sender = thread::spawn(move || writer.write_all(&vec![b'x'; big]));
    let (code, text) = c.reply();
    assert_eq!(code, 552, "{text}");
    assert!(text.contains("5.3.4"), "{text}");
    sender.join().unwrap().expect("big chunk written");
    c.expect("NOOP", 250);
    assert_eq!(d.queued_files(), 0, "an oversized chunk was queued");

    // Declares 1,000 octets of a LAST chunk, sends 10 and hangs up: nothing is queued.
    c.envelope("liar@example.org", &["root"]);
    c.send(b"BDAT 1000 LAST\r\n0123456789");
    c.shutdown();
    drop(c);
    // A declared size that never arrives, from a client that stays: the daemon waits for
    // it without reading anything else as a command, and serves others meanwhile.
    let mut waiting = d.greeted();
    waiting.envelope("liar@example.org", &["root"]);
    waiting.send(b"BDAT 1000000 LAST\r\nQUIT\r\n");
    let mut other = d.greeted();
    queued(&other.message(simple("honest", "x")));
    other.expect("QUIT", 221);
    let got = bridge.wait_for(2, SOON);
    assert_contains(&got[1].reply, &["honest"]);
    assert!(common::wait_until(SOON, || d.queued_files() == 0));
    assert_eq!(
        bridge.received().len(),
        2,
        "a truncated chunk was delivered"
    );
    // When the waiting client leaves, its unfinished chunk is discarded like the one of the
    // client that hung up: no temporary file is left behind.
    drop(waiting);
    assert!(
        common::wait_until(SOON, || d.temp_files().is_empty() && d.queued_files() == 0),
        "left in the queue: {:?}",
        d.queue_entries()
    );
    d.assert_memory_bounded("lying BDAT sizes");
    d.assert_healthy();
}

#[test]
fn nul_bytes_in_commands_and_data() {
    let (bridge, mut d) = setup("hostile-nul", "");
    let mut c = d.greeted();
    // A NUL inside a verb or an address is refused; the session goes on.
    let (code, text) = c.cmd(b"NO\0OP");
    assert!(code == 500 || code == 502, "NUL in a verb: {text}");
    let (code, text) = c.cmd(b"\0");
    assert!(code == 500 || code == 502, "a lone NUL: {text}");
    let (code, text) = c.cmd(b"MAIL FROM:<a\0b@example.org>");
    assert_eq!(code, 501, "NUL in a sender: {text}");
    c.expect("MAIL FROM:<nul@example.org>", 250);
    let (code, text) = c.cmd(b"RCPT TO:<ro\0ot>");
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
    let (bridge, mut d) = setup("hostile-utf8", "");
    let mut c = d.greeted();
    for sender in [
        &b"MAIL FROM:<\xff@example.org>"[..],
        b"MAIL FROM:<a@\xc3(.example.org> SMTPUTF8",
        b"MAIL FROM:<\xed\xa0\x80@example.org>",
        b"MAIL FROM:<\xc0\xaf@example.org>",
    ] {
        let (code, text) = c.cmd(sender);
        assert_eq!(code, 501, "{sender:?}: {text}");
        assert!(text.contains("5.1.7"), "{text}");
    }
    c.expect("MAIL FROM:<jörg@example.org> SMTPUTF8", 250);
    for rcpt in [&b"RCPT TO:<r\xf5\x80\x80\x80>"[..], b"RCPT TO:<\xe2\x82>"] {
        let (code, text) = c.cmd(rcpt);
        assert_eq!(code, 501, "{rcpt:?}: {text}");
        assert!(text.contains("5.1.3"), "{text}");
    }
    c.expect("RCPT TO:<root>", 250);
    c.expect("DATA", 354);
    c.send(b"Subject: utf8 \xff\xfe\r\n\r\nbody \xc3\x28 bytes\r\n.\r\n");
    queued(&c.reply());
    // A HELO name is not an address: either answer will do, as long as nothing breaks.
    let (code, text) = c.cmd(b"EHLO \xff\xfe.example");
    assert!(
        code == 250 || code == 501,
        "EHLO with invalid UTF-8: {text}"
    );
    c.expect("QUIT", 221);
    let got = bridge.wait_for(1, SOON);
    assert_contains(&got[0].reply, &["jörg@example.org"]);
    d.assert_memory_bounded("invalid UTF-8");
    d.assert_healthy();
}

// ---- messages built to hurt a parser --------------------------------------------------

/// Sends `message` in one transaction (streamed in 64 KiB writes) and expects 250.
fn send_message(d: &Daemon, message: &[u8]) {
    let mut c = d.greeted();
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
    let (bridge, mut d) = setup("hostile-headers", "");
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
    send_message(&d, m.as_bytes());
    let got = bridge.wait_for(1, SOON);
    eprintln!(
        "hostile: {} bytes of headers delivered after {:?}",
        m.len(),
        start.elapsed()
    );
    assert_contains(
        &got[0].reply,
        &["many headers", "the body after ten thousand headers"],
    );
    d.assert_memory_bounded("10,000 headers");
    d.assert_healthy();
}

#[test]
fn multipart_nested_a_thousand_deep_is_digested() {
    const DEPTH: usize = 1000;
    let (bridge, mut d) = setup("hostile-nested", "");

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
    send_message(&d, m.as_bytes());

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
    send_message(&d, n.as_bytes());

    let got = bridge.wait_for(2, SOON);
    assert_contains(&got[0].reply, &["deep multipart"]);
    assert_contains(&got[1].reply, &["deep rfc822"]);
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
    let (bridge, mut d) = setup("hostile-base64", "max_message_size = 33554432");
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
    send_message(&d, m.as_bytes());
    let got = bridge.wait_for(1, SLOW);
    let digest = &got[0].reply;
    assert_contains(digest, &["huge base64", "see the attachment", "big.bin"]);
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
