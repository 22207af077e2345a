//! Faults around the real daemon, and what its clients and its log see.
//!
//! Bridge faults — down, refusing connections, hanging, answering one byte per second,
//! 500, 404, resetting mid-response — each in its own test: every SMTP client keeps getting
//! `250` (within the client's read timeout: a bounded wait, never a timing threshold),
//! delivery resumes by itself once the fault ends, order is kept, nothing arrives twice, and
//! the log tells the story in one line per state change (`delivery paused`, `delivery
//! resumed`) however many retries happen in between: the daemon's syslog is captured with
//! its severities (a private mount namespace binds our socket as its syslog), so the test
//! can tell what an administrator sees at `info` from the per-retry `debug` lines.
//!
//! Spool faults — a real full file system (a 2 MiB tmpfs), the spool removed, and the spool
//! made unwritable at run time: `452 4.3.1` to SMTP clients (never `250`), the shim exits 75
//! with one line on stderr, no partial file stays behind, and everything works again when the
//! space or the permission comes back. These need root (mount, chown), and fail under CI
//! without it.

mod common;

use std::time::Duration;

use common::daemon::{simple, Daemon, Syslog, SOON};
use common::{Behaviour, StandInBridge, TestDir};
use smtp_bridge::spool::Spool;

/// The first retry comes 10 s after a failure, the second 20 s after that: a fault that
/// spans two retries and then ends is delivered within this bound.
const RECOVERY: Duration = Duration::from_secs(50);

/// The subjects (`fault msg N .`) of what the bridge accepted, in order.
fn delivered(bridge: &StandInBridge) -> Vec<String> {
    bridge
        .received()
        .iter()
        .map(|r| {
            let at = r.reply.find("fault msg ").map(|a| a + "fault msg ".len());
            let rest = at.map(|a| &r.reply[a..]).unwrap_or("?");
            rest.split(' ').next().unwrap_or("?").to_owned()
        })
        .collect()
}

/// Sends `fault msg N .` on a fresh connection and insists on `250 ... queued as`.
fn send(d: &Daemon, n: usize) {
    let mut c = d.client().expect("connect and EHLO");
    let (code, text) = c
        .message(&simple(&format!("fault msg {n} ."), "body"))
        .expect("reply to the final dot");
    assert_eq!(code, 250, "message {n}: {text}");
    assert!(text.contains("queued as"), "{text}");
    let _ = c.cmd("QUIT");
}

/// Lines (of the stderr copy, which has every level) that contain `needle`.
fn count(lines: &[String], needle: &str) -> usize {
    lines.iter().filter(|l| l.contains(needle)).count()
}

/// One bridge fault, end to end. `reason` is what the log must say caused it.
fn bridge_fault(label: &str, fault: Behaviour, reason: &[&str], permanent: bool) {
    if !common::require_root() {
        return;
    }
    let dir = TestDir::new(label);
    let bridge = StandInBridge::start();
    let syslog = Syslog::start(&dir.path);
    let port = common::free_port();
    let config = common::write_config(
        &dir.path,
        &bridge.url,
        &format!("listen = [\"127.0.0.1:{port}\"]\nbridge_timeout = 2"),
    );
    let d = Daemon::start_syslog(&config, port, &syslog);
    send(&d, 0);
    bridge.wait_for(1, SOON);

    bridge.set_behaviour(fault);
    send(&d, 1);
    // Two failed attempts (the first, and the retry 10 s later), with mail accepted all along.
    let mut n = 2;
    let retried = common::wait_until(RECOVERY, || {
        if n < 5 {
            send(&d, n);
            n += 1;
        }
        count(&d.log_lines(), "status=deferred") >= 2
    });
    assert!(retried, "no retry during the fault:\n{}", d.log_text());
    send(&d, n);
    n += 1;

    bridge.set_behaviour(Behaviour::Accept);
    send(&d, n);
    let total = n + 1;
    bridge.wait_for(total, RECOVERY);
    // Nothing more (no duplicate) turns up once the queue is empty.
    assert!(common::wait_until(SOON, || Spool::new(dir.join("spool"))
        .ids()
        .is_ok_and(|ids| ids.is_empty())));
    d.wait_log("delivery resumed", SOON);
    let want: Vec<String> = (0..total).map(|i| i.to_string()).collect();
    assert_eq!(delivered(&bridge), want, "order, once each");

    // The log: every retry at debug level, but one line per state change above it.
    let all = d.log_lines();
    let info: Vec<String> = syslog.at_most(6);
    let retries = count(&all, "status=deferred");
    let paused: Vec<&String> = info
        .iter()
        .filter(|l| l.contains("delivery paused"))
        .collect();
    eprintln!(
        "{label}: {retries} failed attempts, {} syslog lines at info and above, {} at debug",
        info.len(),
        syslog.lines().len() - info.len()
    );
    for line in &info {
        eprintln!("  {line}");
    }
    assert_eq!(paused.len(), 1, "one 'paused' line:\n{info:#?}");
    assert!(
        reason.iter().any(|r| paused[0].contains(r)),
        "the paused line should name the cause ({reason:?}): {}",
        paused[0]
    );
    // Severity: a refusal (4xx) points at the configuration (error), an outage warns.
    let severity = syslog
        .lines()
        .into_iter()
        .find(|(_, l)| l.contains("delivery paused"))
        .map(|(s, _)| s);
    assert_eq!(severity, Some(if permanent { 3 } else { 4 }), "{paused:?}");
    assert_eq!(count(&info, "delivery resumed"), 1, "{info:#?}");
    assert_eq!(
        count(&info, "status=deferred"),
        1,
        "retries must not be logged above debug:\n{info:#?}"
    );
    assert!(retries >= 2, "{all:#?}");
    assert_eq!(count(&all, "delivery paused"), 1);
    assert_eq!(count(&all, "delivery resumed"), 1);
    assert!(bridge.rejections().is_empty(), "{:?}", bridge.rejections());
}

#[test]
fn bridge_down() {
    bridge_fault("f-down", Behaviour::Down, &["refused"], false);
}

#[test]
fn bridge_refusing_connections() {
    bridge_fault(
        "f-refuse",
        Behaviour::Refuse,
        &["closed", "reset", "eof", "EOF"],
        false,
    );
}

#[test]
fn bridge_hanging() {
    bridge_fault("f-hang", Behaviour::Hang, &["timed out"], false);
}

#[test]
fn bridge_answering_one_byte_per_second() {
    bridge_fault("f-trickle", Behaviour::Trickle, &["timed out"], false);
}

#[test]
fn bridge_answering_500() {
    bridge_fault("f-500", Behaviour::Status(500), &["500"], false);
}

#[test]
fn bridge_answering_404() {
    bridge_fault("f-404", Behaviour::Status(404), &["404"], true);
}

#[test]
fn bridge_resetting_mid_response() {
    bridge_fault(
        "f-reset",
        Behaviour::Reset,
        &["reset", "closed", "EOF", "eof"],
        false,
    );
}
