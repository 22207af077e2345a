//! The stand-in bridge is the judge of every end-to-end test, so it is tested itself: each
//! rule of `../shared/bridge-api.md`, with raw HTTP over a real socket.

mod common;

use common::{Behaviour, StandInBridge};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn request(bridge: &StandInBridge, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(bridge.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(raw).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
}

fn put(path: &str, content_type: Option<&str>, body: &[u8], with_length: bool) -> Vec<u8> {
    let mut raw = format!("PUT {path} HTTP/1.1\r\nHost: x\r\n").into_bytes();
    if let Some(ct) = content_type {
        raw.extend_from_slice(format!("Content-Type: {ct}\r\n").as_bytes());
    }
    if with_length {
        raw.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    raw.extend_from_slice(b"\r\n");
    raw.extend_from_slice(body);
    raw
}

fn status(answer: &str) -> &str {
    answer.split_whitespace().nth(1).unwrap_or("")
}

#[test]
fn enforces_every_rule_of_the_contract() {
    let bridge = StandInBridge::start();
    let good = br#"{"name": "host", "reply": "caf\u00e9"}"#;
    let cases: &[(&str, Vec<u8>, &str)] = &[
        (
            "valid",
            put("/replies", Some("application/json"), good, true),
            "200",
        ),
        (
            "charset suffix",
            put(
                "/replies",
                Some("application/json; charset=utf-8"),
                good,
                true,
            ),
            "200",
        ),
        (
            "POST",
            b"POST /replies HTTP/1.1\r\nContent-Length: 0\r\n\r\n".to_vec(),
            "501",
        ),
        (
            "wrong path",
            put("/reply", Some("application/json"), good, true),
            "404",
        ),
        ("no content type", put("/replies", None, good, true), "400"),
        (
            "text/plain",
            put("/replies", Some("text/plain"), good, true),
            "400",
        ),
        (
            "no length",
            put("/replies", Some("application/json"), good, false),
            "500",
        ),
        (
            "raw UTF-8",
            put(
                "/replies",
                Some("application/json"),
                "{\"name\":\"h\",\"reply\":\"café\"}".as_bytes(),
                true,
            ),
            "500",
        ),
        (
            "bad JSON",
            put("/replies", Some("application/json"), b"{name", true),
            "400",
        ),
        (
            "no reply key",
            put(
                "/replies",
                Some("application/json"),
                br#"{"name":"h"}"#,
                true,
            ),
            "400",
        ),
        (
            "upper-case keys",
            put(
                "/replies",
                Some("application/json"),
                br#"{"NAME":"h","Reply":"r"}"#,
                true,
            ),
            "200",
        ),
    ];
    for (label, raw, want) in cases {
        let answer = request(&bridge, raw);
        assert_eq!(status(&answer), *want, "{label}: {answer}");
    }
    let got = bridge.received();
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].reply, "café");
    assert_eq!(got[2].name, "h");
    assert_eq!(bridge.rejections().len(), 8);
}

#[test]
fn fails_on_demand() {
    let bridge = StandInBridge::start();
    let good = put(
        "/replies",
        Some("application/json"),
        br#"{"name":"h","reply":"r"}"#,
        true,
    );

    bridge.set_behaviour(Behaviour::Status(500));
    assert_eq!(status(&request(&bridge, &good)), "500");

    bridge.set_behaviour(Behaviour::Down);
    std::thread::sleep(Duration::from_millis(100));
    let refused = TcpStream::connect(bridge.addr);
    assert!(refused.is_err(), "Down must refuse connections");

    bridge.set_behaviour(Behaviour::Hang);
    std::thread::sleep(Duration::from_millis(100));
    let mut s = TcpStream::connect(bridge.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    s.write_all(&good).unwrap();
    let mut buf = [0u8; 16];
    let err = s
        .read(&mut buf)
        .expect_err("a hanging bridge answers nothing");
    assert!(matches!(
        err.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    ));
    drop(s);

    bridge.set_behaviour(Behaviour::Accept);
    assert_eq!(status(&request(&bridge, &good)), "200");
    assert_eq!(bridge.wait_for(1, Duration::from_secs(5)).len(), 1);
}
