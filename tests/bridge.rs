//! The bridge client against real sockets: the stand-in bridge of `tests/common`, which
//! enforces `bridge-api.md` to the letter, and tiny raw HTTP servers that answer, fail, reset
//! or hang on purpose and check the exact request bytes the bridge would see.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::{Behaviour, StandInBridge};
use smtp_bridge::bridge::{json_body, Bridge, Outcome};

/// How long a raw server waits for the client before it gives up (so a broken test fails
/// instead of hanging); far longer than any timeout the client under test is given.
const SERVER_PATIENCE: Duration = Duration::from_secs(20);
/// The most a raw server reads of one request.
const MAX_REQUEST: usize = 1 << 20;

/// What a raw server does once it has read the whole request.
#[derive(Clone, Copy)]
enum Then {
    /// Write these bytes and close.
    Answer(&'static [u8]),
    /// Close at once, without a word.
    Close,
    /// Close with a TCP reset (SO_LINGER 0).
    Reset,
    /// Say nothing and keep the connection open until the test is over.
    Hang,
}

/// A request as the server read it.
struct Seen {
    head: String,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Reads one request: the head up to the blank line, then exactly Content-Length bytes.
fn read_request(stream: &mut TcpStream) -> Seen {
    stream.set_read_timeout(Some(SERVER_PATIENCE)).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "client closed before the end of the head");
        buf.extend_from_slice(&chunk[..n]);
        assert!(buf.len() < MAX_REQUEST, "request head too long");
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    let mut seen = Seen {
        head,
        body: buf[head_end..].to_vec(),
    };
    let len: usize = seen
        .header("content-length")
        .expect("no Content-Length")
        .parse()
        .unwrap();
    assert!(len < MAX_REQUEST);
    while seen.body.len() < len {
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "client closed before the end of the body");
        seen.body.extend_from_slice(&chunk[..n]);
    }
    seen
}

/// A server for one connection. Returns its address, the request it read, and a sender
/// that releases a hanging server.
fn serve_once(then: Then) -> (SocketAddr, mpsc::Receiver<Seen>, mpsc::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen_tx, seen_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let seen = read_request(&mut stream);
        seen_tx.send(seen).unwrap();
        match then {
            Then::Answer(bytes) => {
                stream.write_all(bytes).unwrap();
            }
            Then::Close => {}
            Then::Reset => {
                let linger = nix::libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::Linger, &linger)
                    .unwrap();
            }
            Then::Hang => {
                // Hold the connection open until the test has its outcome.
                let _ = release_rx.recv_timeout(SERVER_PATIENCE);
            }
        }
        drop(stream);
    });
    (addr, seen_rx, release_tx)
}

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}/replies")
}

#[test]
fn request_is_what_the_bridge_expects() {
    let (addr, seen, _release) = serve_once(Then::Answer(b"HTTP/1.0 200 OK\r\n\r\n"));
    let reply = "From: Jörg <j@example.org>\nSubject: Grüße 😀 日本\n\nline one\r\nline \"two\"";
    let bridge = Bridge::new(&url(addr), "web1", Duration::from_secs(10));
    assert_eq!(bridge.send(reply), Outcome::Delivered);

    let seen = seen.recv_timeout(SERVER_PATIENCE).unwrap();
    let request_line = seen.head.lines().next().unwrap();
    assert_eq!(request_line, "PUT /replies HTTP/1.1");
    assert!(seen
        .header("content-type")
        .unwrap()
        .contains("application/json"));
    assert_eq!(
        seen.header("content-length"),
        Some(seen.body.len().to_string().as_str())
    );
    assert_eq!(
        seen.header("transfer-encoding"),
        None,
        "must not be chunked"
    );
    assert!(seen.body.iter().all(|&b| b < 0x80), "body is not ASCII");
    assert_eq!(seen.body, json_body("web1", reply).as_bytes());
    let v: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(v["name"], "web1");
    assert_eq!(v["reply"], reply);
}

#[test]
fn answers_are_classified() {
    let table: &[(&'static [u8], &str)] = &[
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", "delivered"),
        (b"HTTP/1.1 204 No Content\r\n\r\n", "delivered"),
        (
            b"HTTP/1.0 404 Not Found\r\nContent-Type: application/json\r\n\r\n{\"error\": \"x\"}",
            "permanent",
        ),
        (b"HTTP/1.0 400 Bad Request\r\n\r\n", "permanent"),
        (b"HTTP/1.0 405 Method Not Allowed\r\n\r\n", "permanent"),
        (
            b"HTTP/1.0 301 Moved\r\nLocation: http://127.0.0.1:1/x\r\n\r\n",
            "permanent",
        ),
        (b"HTTP/1.0 500 Internal Server Error\r\n\r\n", "retry"),
        (b"HTTP/1.0 503 Service Unavailable\r\n\r\n", "retry"),
        (b"HTTP/1.0 408 Request Timeout\r\n\r\n", "retry"),
        (b"HTTP/1.1 429 Too Many Requests\r\n\r\n", "retry"),
        (b"this is not HTTP at all\r\n\r\n", "retry"),
    ];
    for (answer, want) in table {
        let (addr, seen, _release) = serve_once(Then::Answer(answer));
        let outcome = Bridge::new(&url(addr), "box", Duration::from_secs(10)).send("hello");
        let got = match &outcome {
            Outcome::Delivered => "delivered",
            Outcome::Retry(_) => "retry",
            Outcome::Permanent(_) => "permanent",
        };
        assert_eq!(
            got,
            *want,
            "{:?} gave {outcome:?}",
            String::from_utf8_lossy(answer)
        );
        assert!(
            seen.recv_timeout(SERVER_PATIENCE).is_ok(),
            "request not seen"
        );
    }
}

#[test]
fn outcome_strings_are_short_and_useful() {
    let (addr, _seen, _r) = serve_once(Then::Answer(b"HTTP/1.0 500 Oops\r\n\r\n"));
    assert_eq!(
        Bridge::new(&url(addr), "box", Duration::from_secs(10)).send("x"),
        Outcome::Retry("bridge answered 500".to_owned())
    );
    let (addr, _seen, _r) = serve_once(Then::Answer(b"HTTP/1.0 404 Not Found\r\n\r\n"));
    assert_eq!(
        Bridge::new(&url(addr), "box", Duration::from_secs(10)).send("x"),
        Outcome::Permanent("bridge answered 404".to_owned())
    );
}

#[test]
fn refused_is_retry() {
    // Bind and close, so the port is (for a moment) known to have no listener.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let outcome = Bridge::new(&url(addr), "box", Duration::from_secs(5)).send("x");
    assert_eq!(outcome, Outcome::Retry("connection refused".to_owned()));
}

#[test]
fn reset_is_retry() {
    let (addr, seen, _release) = serve_once(Then::Reset);
    let outcome = Bridge::new(&url(addr), "box", Duration::from_secs(10)).send("x");
    assert!(
        matches!(&outcome, Outcome::Retry(why) if why.contains("reset") || why.contains("closed")),
        "{outcome:?}"
    );
    assert!(seen.recv_timeout(SERVER_PATIENCE).is_ok());
}

#[test]
fn close_without_answer_is_retry() {
    let (addr, _seen, _release) = serve_once(Then::Close);
    let outcome = Bridge::new(&url(addr), "box", Duration::from_secs(10)).send("x");
    assert_eq!(
        outcome,
        Outcome::Retry("connection closed without an answer".to_owned())
    );
}

/// A bridge that reads the request and never answers costs one timeout, then the message
/// is kept for later.
#[test]
fn hang_is_bounded_and_retry() {
    let (addr, seen, release) = serve_once(Then::Hang);
    let outcome = Bridge::new(&url(addr), "box", Duration::from_secs(1)).send("x");
    let _ = release.send(());
    assert_eq!(outcome, Outcome::Retry("timed out after 1s".to_owned()));
    assert!(seen.recv_timeout(SERVER_PATIENCE).is_ok());
}

/// A server that accepts nothing at all (its listen queue is never drained and the
/// connection sits in the backlog) is also bounded by the timeout.
#[test]
fn never_accepted_is_bounded_and_retry() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let outcome = Bridge::new(&url(addr), "box", Duration::from_secs(1)).send("x");
    drop(listener);
    assert!(
        matches!(&outcome, Outcome::Retry(why) if why.starts_with("timed out")),
        "{outcome:?}"
    );
}

#[test]
fn unusable_url_is_permanent() {
    for bad in [
        "localhost:8003/replies",
        "ftp://127.0.0.1/replies",
        "http://",
    ] {
        let outcome = Bridge::new(bad, "box", Duration::from_secs(1)).send("x");
        assert!(
            matches!(outcome, Outcome::Permanent(_)),
            "{bad}: {outcome:?}"
        );
    }
}

/// One client sends request after request (the delivery thread keeps one), each on a fresh
/// connection, as the HTTP/1.0 bridge requires.
#[test]
fn one_client_many_requests() {
    const N: usize = 3;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = thread::spawn(move || {
        let mut bodies = Vec::new();
        for _ in 0..N {
            let (mut stream, _) = listener.accept().unwrap();
            bodies.push(read_request(&mut stream).body);
            stream.write_all(b"HTTP/1.0 200 OK\r\n\r\n").unwrap();
        }
        bodies
    });
    let bridge = Bridge::new(&url(addr), "box", Duration::from_secs(10));
    for i in 0..N {
        assert_eq!(bridge.send(&format!("message {i}")), Outcome::Delivered);
    }
    let bodies = server.join().unwrap();
    for (i, body) in bodies.iter().enumerate() {
        assert_eq!(body, json_body("box", &format!("message {i}")).as_bytes());
    }
}

/// Digests the real bridge would choke on (non-ASCII in every plane, control characters,
/// quotes) are accepted by the stand-in and arrive unchanged.
#[test]
fn stand_in_bridge_accepts_every_kind_of_text() {
    let bridge = StandInBridge::start();
    let client = Bridge::new(&bridge.url, "web1 (smtp)", Duration::from_secs(10));
    let replies = [
        "plain ASCII",
        "From: Jörg Müller <j@example.de>\nSubject: Grüße, ça va? ñ ß ÿ",
        "中文 日本語 한국어 — “quotes” € ✓",
        "emoji 😀🎉 and 𝄞, 🧑‍💻 (ZWJ)",
        "control \u{0}\u{1}\u{1b}[0m \u{7f} tab\t cr\r lf\n quote\" backslash\\",
        "",
    ];
    // A digest far larger than the client's 8 KiB output buffer (every character escaped
    // six-fold in JSON) is written in pieces and arrives whole.
    let big = "é€\u{1}\n".repeat(20_000);
    let replies: Vec<&str> = replies.into_iter().chain([big.as_str()]).collect();
    for &reply in &replies {
        assert_eq!(client.send(reply), Outcome::Delivered, "{reply:?}");
    }
    let got = bridge.wait_for(replies.len(), Duration::from_secs(10));
    assert_eq!(bridge.rejections(), Vec::<String>::new());
    for (received, reply) in got.iter().zip(&replies) {
        assert_eq!(received.name, "web1 (smtp)");
        assert_eq!(received.reply, *reply);
    }
}

#[test]
fn stand_in_bridge_failures_are_classified() {
    let bridge = StandInBridge::start();
    let client = Bridge::new(&bridge.url, "box", Duration::from_secs(10));

    bridge.set_behaviour(Behaviour::Status(500));
    assert_eq!(
        client.send("x"),
        Outcome::Retry("bridge answered 500".to_owned())
    );
    bridge.set_behaviour(Behaviour::Status(429));
    assert!(matches!(client.send("x"), Outcome::Retry(_)));
    bridge.set_behaviour(Behaviour::Status(400));
    assert_eq!(
        client.send("x"),
        Outcome::Permanent("bridge answered 400".to_owned())
    );
    bridge.set_behaviour(Behaviour::Accept);
    assert_eq!(client.send("back"), Outcome::Delivered);
    assert_eq!(bridge.received().len(), 1);
}

#[test]
fn stand_in_bridge_wrong_path_is_permanent() {
    let bridge = StandInBridge::start();
    let wrong = bridge.url.replace("/replies", "/reply");
    let outcome = Bridge::new(&wrong, "box", Duration::from_secs(10)).send("x");
    assert_eq!(
        outcome,
        Outcome::Permanent("bridge answered 404".to_owned())
    );
    assert!(bridge.received().is_empty());
}

#[test]
fn stand_in_bridge_hang_is_bounded() {
    let bridge = StandInBridge::start();
    bridge.set_behaviour(Behaviour::Hang);
    let outcome = Bridge::new(&bridge.url, "box", Duration::from_secs(1)).send("x");
    bridge.set_behaviour(Behaviour::Accept);
    assert_eq!(outcome, Outcome::Retry("timed out after 1s".to_owned()));
}

#[test]
fn stand_in_bridge_down_is_refused_and_retry() {
    let bridge = StandInBridge::start();
    bridge.set_behaviour(Behaviour::Down);
    // The stand-in closes its listener on its next turn; wait until connecting fails.
    assert!(common::wait_until(Duration::from_secs(10), || {
        TcpStream::connect(bridge.addr).is_err()
    }));
    let outcome = Bridge::new(&bridge.url, "box", Duration::from_secs(5)).send("x");
    assert_eq!(outcome, Outcome::Retry("connection refused".to_owned()));
}

/// The body is byte for byte what Python's `json.dumps` (the bridge's own language, and
/// what the original sent) writes for the same strings.
#[test]
fn body_matches_pythons_json_dumps() {
    if !common::require_tool("python3") {
        return;
    }
    let samples: &[(&str, &str)] = &[
        ("web1", "plain"),
        (
            "naïve 🖥",
            "From: Jörg\nSubject: Grüße 😀 日本語\r\n\u{0}\u{1f}\u{7f}\u{80}\u{ff}",
        ),
        (
            "q\"b\\s/",
            "tab\t bs\u{8} ff\u{c} 𝄞 \u{fffd}\u{feff}\u{10ffff}",
        ),
    ];
    for (name, reply) in samples {
        // Hand Python the strings through serde_json, which it decodes to the same text.
        let input = serde_json::to_string(&[name, reply]).unwrap();
        let mut child = std::process::Command::new("python3")
            .args([
                "-c",
                "import json,sys; n,r=json.load(sys.stdin); \
                 sys.stdout.write(json.dumps({'name': n, 'reply': r}))",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(
            json_body(name, reply),
            String::from_utf8(out.stdout).unwrap(),
            "{name:?} {reply:?}"
        );
    }
}
