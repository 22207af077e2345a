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

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
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

    // The log: every retry at debug level, but one line per state change above it. The
    // stderr copy is written at once, syslog's by the log thread a few milliseconds later:
    // wait for its last line before counting.
    assert!(
        common::wait_until(SOON, || count(&syslog.at_most(6), "delivery resumed") >= 1),
        "'delivery resumed' never reached syslog"
    );
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

// ---- spool faults ---------------------------------------------------------------------

/// Runs the shim (`sendmail -i root`) on `config` with `message` on stdin, as nobody when
/// asked. Returns its exit code and stderr.
fn shim(config: &Path, message: &str, as_nobody: bool) -> (Option<i32>, String) {
    shim_as(config, message, as_nobody.then_some((NOBODY, NOGROUP)))
}

/// [`shim`] as the user and group `as_user` (or as ourselves).
fn shim_as(config: &Path, message: &str, as_user: Option<(u32, u32)>) -> (Option<i32>, String) {
    let mut cmd = Command::new(common::sendmail_bin());
    cmd.args(["-i", "root"])
        .env("SMTP_BRIDGE_CONFIG", config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some((uid, gid)) = as_user {
        cmd.uid(uid).gid(gid);
    }
    let mut child = cmd.spawn().expect("run sendmail");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(message.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The shim could not spool: exit 75 and exactly one line on stderr saying so.
fn assert_tempfail(out: (Option<i32>, String)) {
    assert_eq!(out.0, Some(75), "{}", out.1);
    assert_eq!(out.1.lines().count(), 1, "one stderr line: {:?}", out.1);
    assert!(
        out.1.starts_with("sendmail: cannot queue message: "),
        "{}",
        out.1
    );
}

/// Sends on an open session and insists on `452 4.3.1`.
fn refused_452(c: &mut common::daemon::Smtp, body: &str) {
    let (code, text) = c.message(body).expect("reply to the final dot");
    assert_eq!(code, 452, "{text}");
    assert!(text.contains("4.3.1"), "{text}");
}

/// Every file under `queue/` and `maildrop/` but spare files (delivered messages' files kept
/// for new ones): after a failed write none may be left.
fn spool_files(spool: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for area in ["queue", "maildrop"] {
        if let Ok(names) = std::fs::read_dir(spool.join(area)) {
            for n in names {
                let name = n.unwrap().file_name().to_string_lossy().into_owned();
                if !name.starts_with(".spare.") {
                    out.push(format!("{area}/{name}"));
                }
            }
        }
    }
    out
}

/// A tmpfs mounted for the test, lazily unmounted on drop.
struct Mount(std::path::PathBuf);

/// Mounts a tmpfs of `size` (e.g. `2m`) on `path`, a new directory.
fn tmpfs(path: &Path, size: &str) -> Mount {
    std::fs::create_dir(path).unwrap();
    let mounted = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=755"),
            "none",
        ])
        .arg(path)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount a {size} tmpfs (needs root)");
    Mount(path.to_path_buf())
}

/// Fills the file system of `path` with that file, then gives back `free` bytes of it.
fn fill_but(path: &Path, free: u64) {
    let size = fill(path);
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(size.saturating_sub(free))
        .unwrap();
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Appends to `path` until the file system is full; returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let chunk = vec![0x55u8; 16 << 10];
    let mut written = 0;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(nix::libc::ENOSPC), "{e}");
                break;
            }
        }
    }
    let _ = f.sync_all();
    written
}

const NOBODY: u32 = 65534;
const NOGROUP: u32 = 65534;
/// An ordinary local user, neither root nor the spool's owner (no passwd entry needed).
const USER: u32 = 4242;

#[test]
fn full_file_system_answers_452_and_recovers_when_space_returns() {
    if !common::require_root() {
        return;
    }
    let dir = TestDir::new("f-full");
    let bridge = StandInBridge::start();
    let spool = dir.join("spool");
    let _mount = tmpfs(&spool, "2m");
    let port = common::free_port();
    let config = common::write_config(
        &dir.path,
        &bridge.url,
        &format!("listen = [\"127.0.0.1:{port}\"]\nbridge_timeout = 2"),
    );
    let d = Daemon::start(&config, port);
    send(&d, 0);
    bridge.wait_for(1, SOON);

    // Full in the middle of a message: 1 MiB with about 600 KiB free.
    let filler = spool.join("filler");
    fill_but(&filler, 600 << 10);
    let mut c = d.client().unwrap();
    let line = format!("{}\r\n", "y".repeat(78));
    refused_452(
        &mut c,
        &simple("fault msg big .", &line.repeat(1 << 20 >> 7 << 1)),
    );
    // The partial file went away: a small message fits in what is left.
    let (code, text) = c.message(&simple("fault msg 1 .", "small")).unwrap();
    assert_eq!(code, 250, "{text}");
    bridge.wait_for(2, SOON);

    // Completely full: nothing fits, the session goes on, the shim says 75. (A message that
    // fits in the blocks of a delivered one's spare file is still taken: it needs no new
    // space. This one is larger than any.)
    fill(&filler);
    refused_452(&mut c, &simple("fault msg lost .", &line.repeat(200)));
    // The spare that message was written over went with it: take its space too.
    fill(&filler);
    c.expect("NOOP", 250).unwrap();
    bridge.set_behaviour(Behaviour::Down);
    assert_tempfail(shim(
        &config,
        "Subject: fault msg shim-lost .\n\nx\n",
        false,
    ));
    assert_tempfail(shim(&config, "Subject: fault msg shim-lost .\n\nx\n", true));
    assert_eq!(spool_files(&spool), Vec::<String>::new(), "leftovers");

    // Space returns: the shim spools, SMTP queues, and everything goes out in order.
    std::fs::remove_file(&filler).unwrap();
    let out = shim(&config, "Subject: fault msg 2 .\n\nx\n", true);
    assert_eq!(out, (Some(0), String::new()));
    send(&d, 3);
    bridge.set_behaviour(Behaviour::Accept);
    bridge.wait_for(4, RECOVERY);
    assert_eq!(delivered(&bridge), ["0", "1", "2", "3"]);
    assert!(common::wait_until(SOON, || spool_files(&spool).is_empty()));
    let log = d.log_text();
    assert!(!log.contains("panicked"), "{log}");
}

/// A local user's message that the daemon cannot take in from the maildrop (the copy into
/// `queue/` does not fit) was still acknowledged: mail queued after it waits for it, and it
/// goes out first once there is room. Found by a chaos soak: the full disk let later SMTP
/// mail overtake it, and then even later `sendmail` runs skip the queue.
#[test]
fn a_maildrop_message_that_cannot_be_taken_in_is_not_overtaken() {
    if !common::require_root() {
        return;
    }
    let dir = TestDir::new("f-maildrop-full");
    let bridge = StandInBridge::start();
    bridge.set_behaviour(Behaviour::Down);
    let spool = dir.join("spool");
    let _mount = tmpfs(&spool, "4m");
    let port = common::free_port();
    let config = common::write_config(
        &dir.path,
        &bridge.url,
        &format!("listen = [\"127.0.0.1:{port}\"]\nbridge_timeout = 2\nsendmail_timeout = 2"),
    );
    let d = Daemon::start(&config, port);

    // About 1 MiB free; A, 700 KB from an ordinary user, fits in the maildrop once, and its
    // copy into queue/ does not fit beside it.
    let filler = spool.join("filler");
    fill_but(&filler, 1 << 20);
    let body = format!("{}\n", "a".repeat(69)).repeat(10_000);
    let (code, err) = shim_as(
        &config,
        &format!("Subject: fault msg A .\n\n{body}"),
        Some((USER, USER)),
    );
    assert_eq!(code, Some(0), "{err}");
    d.wait_log("cannot ingest the maildrop", SOON);

    // B, by SMTP after A was acknowledged: it fits, and must wait for A.
    send(&d, 1);
    bridge.set_behaviour(Behaviour::Accept);
    // A reload tries what waits at once; the maildrop is tried again every few seconds,
    // nudged or not, and each such pass has ended before the next begins.
    d.signal(nix::sys::signal::Signal::SIGHUP);
    d.wait_log_count("cannot ingest the maildrop", 3, SOON);
    assert_eq!(delivered(&bridge), Vec::<String>::new(), "B overtook A");
    // C, root's sendmail: the backlog is still marked, so C queues behind A too.
    let (code, err) = shim(&config, "Subject: fault msg 2 .\n\nx\n", false);
    assert_eq!(code, Some(0), "{err}");
    d.wait_log_count("cannot ingest the maildrop", 4, SOON);
    assert_eq!(delivered(&bridge), Vec::<String>::new(), "C overtook A");
    // mailq counts what the maildrop holds, for monitoring.
    let mailq = Command::new(common::sendmail_bin())
        .arg("-bp")
        .env("SMTP_BRIDGE_CONFIG", &config)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&mailq.stdout);
    assert!(listing.contains("could not be taken in"), "{listing}");
    assert!(listing.trim_end().ends_with("in 3 Requests."), "{listing}");
    // D, another small message from a user, is dropped off behind A: it is taken in (it
    // fits; a big message sorting first must not hold everyone's maildrop mail back), and
    // waits in the queue behind A.
    let (code, err) = shim_as(
        &config,
        "Subject: fault msg 3 .\n\nd\n",
        Some((USER + 1, USER + 1)),
    );
    assert_eq!(code, Some(0), "{err}");
    let queued = || Spool::new(&spool).ids().map_or(0, |ids| ids.len());
    assert!(
        common::wait_until(SOON, || queued() == 3),
        "D was not taken in beside A: {} queued",
        queued()
    );
    assert_eq!(delivered(&bridge), Vec::<String>::new(), "D overtook A");

    // Room again: A goes first, without anyone nudging the daemon.
    std::fs::remove_file(&filler).unwrap();
    bridge.wait_for(4, SOON);
    assert_eq!(delivered(&bridge), ["A", "1", "2", "3"]);
    let log = d.log_text();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn spool_removed_at_run_time_answers_452_until_it_is_back() {
    if !common::require_root() {
        return;
    }
    let (bridge, d) = common::daemon::setup("f-removed", "bridge_timeout = 2");
    let (dir, config) = (d.dir(), d.config.clone());
    let spool = dir.join("spool");
    send(&d, 0);
    bridge.wait_for(1, SOON);

    std::fs::remove_dir_all(&spool).unwrap();
    let mut c = d.client().unwrap();
    refused_452(&mut c, &simple("fault msg lost .", "x"));
    c.expect("NOOP", 250).unwrap();
    bridge.set_behaviour(Behaviour::Down);
    assert_tempfail(shim(&config, "Subject: fault msg shim-lost .\n\nx\n", true));
    assert!(!spool.exists());

    // What brings it back without a restart: root's sendmail prepares a missing spool for
    // the daemon's user (as at install time), and queues its message there.
    let out = shim(&config, "Subject: fault msg 1 .\n\nx\n", false);
    assert_eq!(out, (Some(0), String::new()));
    let (code, text) = c.message(&simple("fault msg 2 .", "x")).unwrap();
    assert_eq!(code, 250, "{text}");
    assert_eq!(
        shim(&config, "Subject: fault msg 3 .\n\nx\n", true),
        (Some(0), String::new())
    );
    bridge.set_behaviour(Behaviour::Accept);
    bridge.wait_for(4, RECOVERY);
    assert_eq!(delivered(&bridge), ["0", "1", "2", "3"]);
    spool_worker_logs_the_connection_id_not_its_slot(&d.log_lines());
}

/// Regression: the spool worker logged `conn=TOKEN` (a reused slot number) while every other
/// line about the same connection says `conn=ID`, so its error pointed at another session.
fn spool_worker_logs_the_connection_id_not_its_slot(log: &[String]) {
    let conn_of = |line: &String| {
        let at = line.find("conn=")? + 5;
        Some(line[at..].split(' ').next()?.to_owned())
    };
    let worker = log
        .iter()
        .find(|l| l.contains("cannot create spool file"))
        .and_then(conn_of);
    let session = log
        .iter()
        .find(|l| l.contains("message not queued"))
        .and_then(conn_of);
    assert!(worker.is_some(), "{log:#?}");
    assert_eq!(worker, session, "{log:#?}");
}

#[test]
fn spool_made_unwritable_at_run_time_answers_452_and_recovers() {
    if !common::require_root() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let (bridge, d) = common::daemon::setup("f-unwritable", "bridge_timeout = 2");
    let (dir, config) = (d.dir(), d.config.clone());
    let spool = dir.join("spool");
    send(&d, 0);
    bridge.wait_for(1, SOON);
    // One message waits in the queue while the fault lasts; it must come out whole.
    bridge.set_behaviour(Behaviour::Down);
    send(&d, 1);
    d.wait_log("delivery paused", SOON);

    let mode = std::fs::metadata(&spool).unwrap().permissions().mode() & 0o7777;
    std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o000)).unwrap();
    let mut c = d.client().unwrap();
    refused_452(&mut c, &simple("fault msg lost .", "x"));
    refused_452(&mut c, &simple("fault msg lost again .", "x"));
    c.expect("NOOP", 250).unwrap();
    assert_tempfail(shim(&config, "Subject: fault msg shim-lost .\n\nx\n", true));

    std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(mode)).unwrap();
    let (code, text) = c.message(&simple("fault msg 2 .", "x")).unwrap();
    assert_eq!(code, 250, "{text}");
    assert_eq!(
        shim(&config, "Subject: fault msg 3 .\n\nx\n", true),
        (Some(0), String::new())
    );
    // Nothing corrupt: what is queued reads whole.
    let s = Spool::new(&spool);
    for id in s.ids().unwrap() {
        let (entry, raw) = s.read(&id, 1 << 20).unwrap();
        assert_eq!(raw.len() as u64, entry.size, "{id}");
    }
    bridge.set_behaviour(Behaviour::Accept);
    bridge.wait_for(4, RECOVERY);
    assert_eq!(delivered(&bridge), ["0", "1", "2", "3"]);
    assert!(common::wait_until(SOON, || spool_files(&spool).is_empty()));
}
