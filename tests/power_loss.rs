//! Power loss: no acknowledged message is lost when the power goes, at any moment.
//!
//! The spool lives on ext4 on a loop device over `tests/power_loss/disk.py`, a FUSE disk
//! that logs every write and every cache flush in the order they reached it. While the
//! daemon takes mail over SMTP and `sendmail` drops mail as a local user and as root, and
//! the bridge comes and goes (so messages are delivered, removed, and their files kept as
//! spares and written over), every `250` and every exit 0 is stamped. Afterwards the log is
//! replayed into the disk as a power cut could have left it just after one flush:
//! everything that reached the disk before it, and a random part of what came after (a
//! volatile cache that wrote some of it back). For many such moments, the image gets
//! `e2fsck -y` as at boot, a fresh daemon starts on it with a bridge up, and every message
//! acknowledged before that moment and not yet delivered must reach the bridge, whole, and
//! as itself: a file that held another message's bytes, or an envelope over someone else's
//! text, fails the test.
//!
//! Needs root, a loop device, `/dev/fuse`, e2fsprogs and Debian's python3-fusepy (a missing
//! one fails under CI, and skips elsewhere).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::daemon::{Daemon, Smtp};
use common::{monotonic_ns, Behaviour, StandInBridge, TestDir};

const DISK_BYTES: u64 = 64 << 20;
const PYTHON: &str = "/usr/bin/python3";
/// SMTP sessions at once, and messages each sends (reconnecting now and then).
const SESSIONS: usize = 3;
const PER_SESSION: usize = 40;
/// `sendmail` runs: two in three as a local user (into `maildrop/`), one as root.
const SHIM_RUNS: usize = 15;
/// Moments of power loss replayed per file system.
const CRASH_POINTS: usize = 36;

fn disk_py() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/power_loss/disk.py")
}

/// Whether everything the test needs is here (see the module comment).
fn prerequisites() -> bool {
    if !common::require_root()
        || !common::require_tool("losetup")
        || !common::require_tool("mkfs.ext4")
        || !common::require_tool("e2fsck")
    {
        return false;
    }
    let fusepy = Command::new(PYTHON)
        .args(["-c", "import fusepy"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let fuse = Path::new("/dev/fuse").exists();
    if !fusepy || !fuse {
        let what = if fuse { "python3-fusepy" } else { "/dev/fuse" };
        assert!(
            !common::under_ci(),
            "{what} is required for the power-loss test under CI (install it in .ci/run)"
        );
        eprintln!("SKIP: {what} missing");
        return false;
    }
    true
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The logging disk, a loop device over it, and ext4 mounted from it. Taken apart in
/// order on drop, whatever failed.
struct Disk {
    fuse_dir: PathBuf,
    mnt: PathBuf,
    log: PathBuf,
    server: Option<Child>,
    loop_dev: Option<String>,
    mounted: bool,
}

impl Disk {
    fn start(dir: &TestDir, mkfs_options: &[&str]) -> Disk {
        let fuse_dir = dir.join("fuse");
        let mnt = dir.join("mnt");
        std::fs::create_dir(&fuse_dir).unwrap();
        std::fs::create_dir(&mnt).unwrap();
        let log = dir.join("disk.log");
        let server = Command::new(PYTHON)
            .arg(disk_py())
            .arg("serve")
            .arg(&fuse_dir)
            .arg(DISK_BYTES.to_string())
            .arg(&log)
            .stdout(Stdio::null())
            .spawn()
            .expect("start disk.py");
        let mut disk = Disk {
            fuse_dir: fuse_dir.clone(),
            mnt: mnt.clone(),
            log,
            server: Some(server),
            loop_dev: None,
            mounted: false,
        };
        assert!(
            common::wait_until(Duration::from_secs(10), || fuse_dir.join("disk").exists()),
            "the FUSE disk did not appear"
        );
        let dev = run(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(fuse_dir.join("disk")));
        disk.loop_dev = Some(dev.trim().to_owned());
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .args(mkfs_options)
            .arg(dev.trim()));
        run(Command::new("mount").arg(dev.trim()).arg(&mnt));
        disk.mounted = true;
        run(Command::new("chmod").arg("755").arg(&mnt));
        disk
    }

    /// Unmounts everything and returns the complete log.
    fn unplug(&mut self) -> PathBuf {
        if self.mounted {
            run(Command::new("umount").arg(&self.mnt));
            self.mounted = false;
        }
        if let Some(dev) = self.loop_dev.take() {
            run(Command::new("losetup").args(["-d", &dev]));
        }
        if let Some(mut server) = self.server.take() {
            // The loop device lets go of the file asynchronously: retry the unmount.
            let unmounted = common::wait_until(Duration::from_secs(10), || {
                Command::new("umount")
                    .arg(&self.fuse_dir)
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            });
            assert!(unmounted, "cannot unmount the FUSE disk");
            let exited = common::wait_until(Duration::from_secs(10), || {
                server.try_wait().ok().flatten().is_some()
            });
            assert!(exited, "disk.py did not exit");
        }
        self.log.clone()
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        if let Some(dev) = self.loop_dev.take() {
            let _ = Command::new("losetup").args(["-d", &dev]).status();
        }
        if let Some(mut server) = self.server.take() {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.fuse_dir)
                .status();
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

/// An image mounted read-write through a loop device of its own; unmounted on drop.
struct Image(PathBuf);

impl Drop for Image {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Never mount the next image over this one.
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// The message with this token: the envelope recipient names it, the header `To` does not
/// (so the digest shows the envelope), and the body says it at the start and at the end. A
/// header of `filler` bytes, the token over and over, varies the file size without reaching
/// the digest (and a stale block of another message in it would name another token).
fn message(token: &str, filler: usize) -> String {
    format!(
        "From: sender@example.com\r\nTo: owner@example.com\r\nSubject: power {token}\r\n\
         X-Filler: {}\r\n\r\nBEGIN {token}\r\nthe body of {token}\r\nEND {token}\r\n",
        filler_text(token, filler)
    )
}

fn filler_text(token: &str, len: usize) -> String {
    format!("{token}-").repeat(len / (token.len() + 1) + 1)[..len].to_owned()
}

/// The parts of a sent message a spool file must hold byte for byte (line ends aside): its
/// filler header and its body, which ends the file.
fn sent_parts(sent: &str) -> (String, String) {
    let sent = sent.replace("\r\n", "\n");
    let filler = sent
        .lines()
        .find(|l| l.starts_with("X-Filler: "))
        .expect("a filler line")
        .to_owned();
    let body = sent[sent.find("\n\nBEGIN ").expect("a body")..].to_owned();
    (filler, body)
}

fn recipient(token: &str) -> String {
    format!("{token}@example.com")
}

/// What the digest says: the tokens of the subject, the envelope recipient, and the body's
/// three lines. A message delivered whole and as itself names one token five times.
fn tokens_in(reply: &str) -> Vec<String> {
    let mut found = Vec::new();
    for word in reply.split(|c: char| c.is_whitespace() || c == '<' || c == '>' || c == ',') {
        let word = word.trim_end_matches("@example.com");
        if (word.starts_with("pl") || word.starts_with("sm")) && word.contains('x') {
            found.push(word.to_owned());
        }
    }
    found
}

/// Stamps of every acknowledgement and every delivery of the run.
#[derive(Default)]
struct Record {
    /// token -> when its 250 (or the shim's exit 0) arrived.
    acked: BTreeMap<String, u64>,
    /// token -> the message as sent (acknowledged or not).
    sent: BTreeMap<String, String>,
}

fn smtp_load(addr: std::net::SocketAddr, session: usize, record: Arc<Mutex<Record>>) {
    let mut smtp: Option<Smtp> = None;
    for n in 0..PER_SESSION {
        if smtp.is_none() || n % 10 == 0 {
            if let Some(mut s) = smtp.take() {
                let _ = s.cmd("QUIT");
            }
            let mut s = Smtp::greeted(addr).expect("connect");
            s.expect("EHLO power", 250).expect("EHLO");
            smtp = Some(s);
        }
        let s = smtp.as_mut().unwrap();
        let token = format!("pl{session}x{n}");
        // 0 to ~24 KiB of filler: small files become spares, large ones do not.
        let filler = (n * 7919 + session * 104_729) % 24_000;
        let text = message(&token, filler);
        record
            .lock()
            .unwrap()
            .sent
            .insert(token.clone(), text.clone());
        let reply = s
            .message_from("sender@example.com", &[&recipient(&token)], text.as_bytes())
            .expect("send");
        if reply.0 == 250 {
            record.lock().unwrap().acked.insert(token, monotonic_ns());
        }
    }
}

/// `sendmail` by turns as `nobody` (into `maildrop/`, made durable with a `syncfs`, since
/// it may not open that directory) and as root (which writes into `queue/` as the spool's
/// owner, with its own fsyncs and retry state).
fn shim_load(config: &Path, record: Arc<Mutex<Record>>) {
    for n in 0..SHIM_RUNS {
        let as_root = n % 3 == 2;
        let token = if as_root {
            format!("smrx{n}")
        } else {
            format!("smx{n}")
        };
        let mut cmd = Command::new(common::sendmail_bin());
        cmd.args(["-i", "-f", "sender@example.com", &recipient(&token)])
            .env("SMTP_BRIDGE_CONFIG", config)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if !as_root {
            cmd.uid(65534).gid(65534);
        }
        let mut child = cmd.spawn().expect("run sendmail");
        let text = message(&token, n * 1500);
        record
            .lock()
            .unwrap()
            .sent
            .insert(token.clone(), text.clone());
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        if out.status.success() {
            record.lock().unwrap().acked.insert(token, monotonic_ns());
        } else {
            // Refused (e.g. the spool was busy): not acknowledged, so not owed.
            eprintln!(
                "sendmail {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn config_text(spool: &Path, bridge_url: &str, port: u16, extra: &str) -> String {
    format!(
        "queue = \"{bridge_url}\"\nname = \"power\"\nhostname = \"power\"\n\
         spool_dir = \"{}\"\nlisten = [\"127.0.0.1:{port}\"]\n{extra}\n",
        spool.display()
    )
}

fn write_config(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

fn start_daemon(config_path: &Path, spool: &Path, bridge_url: &str, extra: &str) -> Daemon {
    common::daemon::start_on_a_free_port(
        |port| {
            write_config(config_path, &config_text(spool, bridge_url, port, extra));
            config_path.to_path_buf()
        },
        |_| {},
    )
}

/// The run: mail in over SMTP and `sendmail` while the bridge flaps; returns the stamps,
/// the deliveries, and when the daemon started.
fn take_mail(dir: &TestDir, disk: &Disk, extra: &str) -> (Record, BTreeMap<String, u64>, u64) {
    let spool = disk.mnt.join("spool");
    let bridge = StandInBridge::start();
    let config = dir.join("smtp_bridge.conf");
    let started = monotonic_ns();
    let mut daemon = start_daemon(&config, &spool, &bridge.url, extra);
    let record = Arc::new(Mutex::new(Record::default()));

    let mut handles = Vec::new();
    for session in 0..SESSIONS {
        let record = record.clone();
        let addr = daemon.addr();
        handles.push(thread::spawn(move || smtp_load(addr, session, record)));
    }
    {
        let record = record.clone();
        let config = config.clone();
        handles.push(thread::spawn(move || shim_load(&config, record)));
    }
    // The bridge flaps: up 200 ms (deliveries, removals, spares), down 150 ms (a backlog).
    let mut up = true;
    while handles.iter().any(|h| !h.is_finished()) {
        thread::sleep(Duration::from_millis(if up { 200 } else { 150 }));
        up = !up;
        bridge.set_behaviour(if up {
            Behaviour::Accept
        } else {
            Behaviour::Down
        });
    }
    for h in handles {
        h.join().expect("a load thread panicked");
    }
    // Some more deliveries, then the end of the run (the moments replayed all lie before).
    bridge.set_behaviour(Behaviour::Accept);
    thread::sleep(Duration::from_millis(300));
    daemon.kill9();
    let delivered: BTreeMap<String, u64> = bridge
        .received()
        .iter()
        .flat_map(|r| tokens_in(&r.reply).into_iter().map(|t| (t, r.at_ns)))
        .fold(BTreeMap::new(), |mut m, (t, at)| {
            m.entry(t).or_insert(at);
            m
        });
    let record = Arc::try_unwrap(record)
        .unwrap_or_else(|_| panic!("load threads still hold the record"))
        .into_inner()
        .unwrap();
    (record, delivered, started)
}

/// Every flush's stamp, in order.
fn flush_stamps(log: &Path) -> Vec<u64> {
    let out = run(Command::new(PYTHON).arg(disk_py()).arg("stamps").arg(log));
    out.lines().map(|l| l.trim().parse().unwrap()).collect()
}

/// The disk as a power cut after flush `k` left it, checked by `e2fsck -y` as at boot, and
/// mounted; with what `disk.py crash` said, and the moment the power went (the last write
/// the disk kept).
fn crash_image(dir: &TestDir, log: &Path, k: usize, keep: f64) -> (Image, String, u64) {
    let img = dir.join("crash.img");
    let out = run(Command::new(PYTHON)
        .arg(disk_py())
        .arg("crash")
        .arg(log)
        .arg(&img)
        .arg(k.to_string())
        .arg(k.to_string())
        .arg(keep.to_string()));
    let fsck = Command::new("e2fsck")
        .args(["-f", "-y"])
        .arg(&img)
        .output()
        .unwrap();
    // 0: clean, 1: errors corrected, 2: corrected, reboot wanted. 4 and up: not corrected.
    let code = fsck.status.code().unwrap_or(8);
    assert!(
        code <= 2,
        "e2fsck could not repair the disk after flush {k} (exit {code}):\n{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let cut = out
        .split_whitespace()
        .nth(3)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("disk.py crash said {out:?}"));
    let at = dir.join("crashed");
    let _ = std::fs::create_dir(&at);
    run(Command::new("mount")
        .args(["-o", "loop"])
        .arg(&img)
        .arg(&at));
    (
        Image(at),
        format!("{} (e2fsck exit {code})", out.trim()),
        cut,
    )
}

/// After flush `k` (stamped `stamp`): a daemon started on what the disk kept delivers every
/// message acknowledged before the flush and not delivered before the power went (a
/// delivered message's removal may have reached the disk), each whole and as itself.
/// Without `journal`, a message may instead be in `lost+found/`, whole, where `e2fsck` put
/// it. Returns how many messages were owed, and how many of them were in `lost+found/`.
#[allow(clippy::too_many_arguments)]
fn check_moment(
    dir: &TestDir,
    log: &Path,
    k: usize,
    stamp: u64,
    keep: f64,
    record: &Record,
    delivered: &BTreeMap<String, u64>,
    extra: &str,
    journal: bool,
) -> (usize, usize) {
    let (image, what, cut) = crash_image(dir, log, k, keep);
    let owed: BTreeSet<&String> = record
        .acked
        .iter()
        .filter(|(token, acked)| {
            **acked < stamp && delivered.get(*token).is_none_or(|at| *at >= cut)
        })
        .map(|(token, _)| token)
        .collect();
    let spool = image.0.join("spool");
    if !spool.exists() {
        assert!(
            owed.is_empty(),
            "flush {k}: no spool, but {owed:?} were acknowledged"
        );
        return (0, 0);
    }
    // Before anything reads it: every message file in the spool, acknowledged or not, holds
    // its own message (a renamed file's data was durable before the rename), its filler and
    // body byte for byte, so a spare written over is never found holding older bytes.
    // Without a journal, e2fsck's repairs may leave anything in a file that was being
    // removed or written (blocks claimed twice, a deletion half done): not checked there.
    for sub in ["queue", "maildrop"].into_iter().filter(|_| journal) {
        // (A cut before the daemon's first start finished may leave no queue/ yet.)
        let Ok(entries) = std::fs::read_dir(spool.join(sub)) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name.ends_with(".retry") {
                continue;
            }
            let text = String::from_utf8_lossy(&std::fs::read(entry.path()).unwrap())
                .replace("\r\n", "\n");
            let token = text
                .lines()
                .find_map(|l| l.strip_prefix("rcpt "))
                .and_then(|r| r.strip_suffix("@example.com"))
                .unwrap_or_else(|| {
                    panic!("flush {k} [{what}]: {sub}/{name} has no recipient:\n{text:.400}")
                });
            let sent = record.sent.get(token).unwrap_or_else(|| {
                panic!("flush {k} [{what}]: {sub}/{name} is for {token}, never sent")
            });
            let (filler, body) = sent_parts(sent);
            assert!(
                // (The SMTP client's CRLF before the final dot adds an empty last line.)
                text.contains(&format!("\n{filler}\n"))
                    && text.trim_end().ends_with(body.trim_end()),
                "flush {k} [{what}]: {sub}/{name} ({token}) does not hold its message whole:\n{text:.600}"
            );
        }
    }
    let bridge = StandInBridge::start();
    let config = dir.join("recovered.conf");
    let mut daemon = start_daemon(&config, &spool, &bridge.url, extra);
    daemon.wait_log("ready", Duration::from_secs(10));
    // Until everything is out: nothing left in queue/ or maildrop/ but spares.
    let drained = common::wait_until(Duration::from_secs(60), || {
        let waiting = |sub: &str| {
            std::fs::read_dir(spool.join(sub))
                .map(|d| {
                    d.flatten()
                        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                        .count()
                })
                .unwrap_or(0)
        };
        waiting("queue") == 0 && waiting("maildrop") == 0
    });
    let got = bridge.received();
    let log_text = daemon.log_text();
    daemon.stop();
    assert!(
        drained,
        "flush {k} [{what}]: the recovered spool did not drain; delivered {}, log:\n{log_text}",
        got.len()
    );
    let mut arrived = BTreeSet::new();
    for r in &got {
        let tokens = tokens_in(&r.reply);
        let first = tokens.first().cloned().unwrap_or_default();
        let whole = tokens.len() == 5 && tokens.iter().all(|t| *t == first);
        // Without a journal, what e2fsck repaired may be delivered too; only whole messages
        // count as delivered there.
        assert!(
            whole || !journal,
            "flush {k} [{what}]: a digest that is not one whole message:\n{}",
            r.reply
        );
        if whole {
            arrived.insert(first);
        }
    }
    let warned = log_text.contains("on ext4 without a journal");
    assert_eq!(
        warned, !journal,
        "flush {k}: the journal warning:\n{log_text}"
    );
    let rescued: Vec<String> = std::fs::read_dir(image.0.join("lost+found"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    let whole_in = |text: &String, token: &str| {
        text.contains(&format!("\nrcpt {}\n", recipient(token)))
            && text.contains(&format!(
                "BEGIN {token}\r\nthe body of {token}\r\nEND {token}\r\n"
            ))
    };
    let mut in_lost_found = 0;
    let lost: Vec<&&String> = owed
        .iter()
        .filter(|t| !arrived.contains(**t))
        .filter(|t| {
            let rescued = !journal && rescued.iter().any(|text| whole_in(text, t));
            in_lost_found += usize::from(rescued);
            !rescued
        })
        .collect();
    assert!(
        lost.is_empty(),
        "flush {k} [{what}]: acknowledged and lost: {lost:?}\n(owed {}, delivered after recovery {})\nlog:\n{log_text}",
        owed.len(),
        got.len()
    );
    let failed = std::fs::read_dir(spool.join("failed"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(
        failed == 0 || !journal,
        "flush {k} [{what}]: something was set aside:\n{log_text}"
    );
    drop(image);
    (owed.len(), in_lost_found)
}

/// One run at a time: each has a FUSE disk, loop devices and a daemon of its own, and three
/// side by side on two cores only slow each other down.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn power_loss(label: &str, journal: bool, extra: &str) {
    if !prerequisites() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TestDir::new(label);
    // 4 KiB blocks as on any real disk (mke2fs would pick 1 KiB for a disk this small).
    let mkfs_options: &[&str] = if journal {
        &["-b", "4096"]
    } else {
        &["-b", "4096", "-O", "^has_journal"]
    };
    let mut disk = Disk::start(&dir, mkfs_options);
    let (record, delivered, started) = take_mail(&dir, &disk, extra);
    let log = disk.unplug();
    let acked = record.acked.len();
    assert!(
        acked >= SESSIONS * PER_SESSION,
        "only {acked} messages were acknowledged"
    );
    assert!(
        !delivered.is_empty() && delivered.len() < acked,
        "the bridge should have taken some of the mail during the run, not all: {}",
        delivered.len()
    );

    // The moments: flushes after the daemon started, spread evenly, plus the last one; after
    // each, half the writes that followed (a different half each time) or none of them.
    let stamps = flush_stamps(&log);
    let first = stamps
        .iter()
        .position(|s| *s > started)
        .unwrap_or(stamps.len());
    let candidates: Vec<usize> = (first + 1..=stamps.len()).collect();
    assert!(
        candidates.len() >= CRASH_POINTS,
        "only {} flushes while the daemon ran",
        candidates.len()
    );
    let mut moments: Vec<usize> = (0..CRASH_POINTS)
        .map(|i| candidates[i * (candidates.len() - 1) / (CRASH_POINTS - 1)])
        .collect();
    moments.dedup();
    let begun = Instant::now();
    let (mut owed_total, mut lost_found_total) = (0, 0);
    for (i, k) in moments.iter().enumerate() {
        let keep = if i % 3 == 2 { 0.0 } else { 0.5 };
        let (owed, in_lost_found) = check_moment(
            &dir,
            &log,
            *k,
            stamps[*k - 1],
            keep,
            &record,
            &delivered,
            extra,
            journal,
        );
        owed_total += owed;
        lost_found_total += in_lost_found;
    }
    // A replay that owed nothing proves nothing.
    assert!(
        owed_total >= 10 * moments.len(),
        "only {owed_total} messages owed over {} moments",
        moments.len()
    );
    eprintln!(
        "{label}: {acked} acknowledged, {} delivered during the run, {} flushes; {} power cuts \
         replayed in {:?}, {owed_total} messages owed in all, none lost \
         ({lost_found_total} of them whole in lost+found/)",
        delivered.len(),
        stamps.len(),
        moments.len(),
        begun.elapsed()
    );
    drop(disk);
}

/// ext4 as Debian makes it (journal, data=ordered), the spool's default `spool_sync`: every
/// message owed is delivered from `queue/` or `maildrop/`.
#[test]
fn no_acknowledged_message_is_lost_to_a_power_cut_on_ext4() {
    power_loss("power-ext4", true, "");
}

/// The same with `spool_sync = "file"` (an fdatasync per message).
#[test]
fn no_acknowledged_message_is_lost_to_a_power_cut_on_ext4_with_file_syncs() {
    power_loss("power-ext4-file", true, "spool_sync = \"file\"");
}

/// ext4 without a journal (as some VM images are): fsync keeps each message and its
/// directory entry, but not the file system's own bookkeeping, and `e2fsck` may then move
/// messages, whole, into `lost+found/` (a directory split that was half written loses their
/// entries), or leave a file being removed with another's blocks. Nothing acknowledged is
/// destroyed (each is delivered whole or lies whole in `lost+found/`), the daemon drains
/// whatever it finds, and it warns at start.
#[test]
fn no_acknowledged_message_is_destroyed_by_a_power_cut_on_ext4_without_journal() {
    power_loss("power-ext4-nojournal", false, "");
}
