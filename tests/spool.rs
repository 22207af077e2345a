//! The spool against the real file system: durability of committed messages, ID order across
//! threads and processes, the hostile maildrop, crash leftovers, and what a full disk (a file
//! size limit in a child process) leaves behind.

mod common;

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::TestDir;
use smtp_bridge::envelope::{Envelope, Origin};
use smtp_bridge::spool::{
    spare_charge, QueueId, Spares, Spool, MAGIC, MAX_HEADER_BYTES, SPARE_MAX_BYTES,
};

/// The environment variable that turns `child_helper` into a child process's main.
const CHILD_ENV: &str = "SMTP_BRIDGE_SPOOL_TEST_CHILD";

fn envelope(sender: &str, rcpts: &[&str]) -> Envelope {
    Envelope {
        sender: sender.into(),
        recipients: rcpts.iter().map(|r| r.to_string()).collect(),
        origin: Origin::Smtp {
            peer: "127.0.0.1:40000".parse().unwrap(),
            helo: "client.example".into(),
        },
        // The spool keeps times to the microsecond.
        arrival: UNIX_EPOCH
            + Duration::from_micros(
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_micros() as u64,
            ),
    }
}

fn prepared(dir: &TestDir) -> Spool {
    let spool = Spool::new(dir.join("spool"));
    spool.prepare(None).unwrap();
    spool
}

/// Every name in a directory, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

/// Commits `body` in `queue/` and returns its ID.
fn queue_message(spool: &Spool, env: &Envelope, body: &[u8]) -> QueueId {
    let mut w = spool.create(env).unwrap();
    w.write_all(body).unwrap();
    assert_eq!(w.size(), body.len() as u64);
    w.commit().unwrap()
}

/// Commits `body` in `queue/` over a spare from `spares` if one is ready, and returns its ID.
fn queue_reusing(spool: &Spool, env: &Envelope, spares: &Spares, body: &[u8]) -> QueueId {
    let mut w = spool.create_reusing(env, spares).unwrap();
    w.write_all(body).unwrap();
    w.commit().unwrap()
}

/// Commits `body` in `maildrop/` and returns its ID.
fn drop_message(spool: &Spool, env: &Envelope, body: &[u8]) -> QueueId {
    let mut w = spool.create_maildrop(env).unwrap();
    w.write_all(body).unwrap();
    w.commit().unwrap()
}

/// Runs this test binary again as a child whose main is `child_helper`, in `mode` with `arg`,
/// optionally as another user.
fn run_child(mode: &str, arg: &Path, uid: Option<u32>) -> Output {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--ignored",
        "--exact",
        "child_helper",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, format!("{mode}:{}", arg.display()));
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "child {mode} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The value of a `KEY=VALUE` word a child printed (libtest puts its own text before it).
fn child_value(out: &Output, key: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")).map(str::to_owned))
        .unwrap_or_else(|| panic!("child printed no {key}=: {stdout}"))
}

/// Not a test of its own: the main of the child processes that `run_child` starts (ignored in
/// normal runs, selected with `--ignored --exact child_helper`).
#[test]
#[ignore = "child process main, run by the other tests"]
fn child_helper() {
    let spec = std::env::var(CHILD_ENV).expect("run by run_child only");
    let (mode, arg) = spec.split_once(':').unwrap();
    let spool = Spool::new(arg);
    match mode {
        "id" => println!("id={}", QueueId::generate()),
        "commit" => {
            let id = queue_message(&spool, &envelope("child@x", &["r@x"]), b"from a child\n");
            println!("id={id}");
        }
        "maildrop" => {
            // An unprivileged user: maildrop works, queue/ does not.
            let id = drop_message(&spool, &envelope("nobody@x", &["r@x"]), b"dropped\n");
            println!("id={id}");
            let queue = spool.create(&envelope("nobody@x", &["r@x"])).map(|_| ());
            println!("queue={:?}", queue.map_err(|e| e.kind()).err());
        }
        "fsize" => {
            // A file size limit stands in for a full disk: writes past it fail with EFBIG
            // once SIGXFSZ is ignored.
            unsafe {
                nix::sys::signal::signal(
                    nix::sys::signal::Signal::SIGXFSZ,
                    nix::sys::signal::SigHandler::SigIgn,
                )
                .unwrap();
            }
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_FSIZE, 65536, 65536)
                .unwrap();
            let big = vec![b'x'; 1 << 20];
            let env = envelope("a@x", &["b@x"]);
            let queue = spool
                .create(&env)
                .and_then(|mut w| w.write_all(&big).and_then(|()| w.commit()));
            println!("queue={:?}", queue.err().and_then(|e| e.raw_os_error()));
            // Small writes stay in the buffer, so the last ones only fail at commit's flush.
            let edge = spool.create(&env).and_then(|mut w| {
                for chunk in big[..65536 - 100].chunks(1000) {
                    w.write_all(chunk)?;
                }
                w.commit()
            });
            println!("edge={:?}", edge.err().and_then(|e| e.raw_os_error()));
            let drop = spool
                .create_maildrop(&env)
                .and_then(|mut w| w.write_all(&big).and_then(|()| w.commit()));
            println!("maildrop={:?}", drop.err().and_then(|e| e.raw_os_error()));
            let ingest = spool.ingest_maildrop(1 << 20);
            println!("ingest={:?}", ingest.err().and_then(|e| e.raw_os_error()));
        }
        other => panic!("unknown child mode {other}"),
    }
}

#[test]
fn committed_message_is_on_disk_byte_for_byte() {
    let dir = TestDir::new("spool-durable");
    let spool = prepared(&dir);
    // Bytes a careless spool would mangle: NUL, lone CR, a lone dot line, no final newline,
    // 8-bit, and more than one write buffer.
    let mut body = b"Subject: x\r\n\r\n\0a\rb\n.\n\xff\xfe".to_vec();
    body.extend(std::iter::repeat_n(b'z', 200_000));
    body.extend_from_slice(b"\n.");
    let env = envelope("s@x", &["r1@x", "r2@x"]);
    let id = queue_message(&spool, &env, &body);
    assert!(id.is_valid());

    let on_disk = fs::read(spool.root().join("queue").join(&id.0)).unwrap();
    assert!(on_disk.starts_with(format!("{MAGIC}\n").as_bytes()));
    assert!(on_disk.ends_with(&body));
    let header = &on_disk[..on_disk.len() - body.len()];
    assert!(header.ends_with(b"\n\n"), "header ends with a blank line");
    assert_eq!(mode(&spool.root().join("queue").join(&id.0)), 0o600);

    let list = spool.list().unwrap();
    assert_eq!(list.len(), 1);
    let entry = &list[0];
    assert_eq!(entry.id, id);
    assert_eq!(entry.size, body.len() as u64);
    assert_eq!(entry.envelope, env);
    assert_eq!(entry.attempts, 0);
    assert_eq!(entry.next_attempt, env.arrival);
    assert_eq!(entry.last_error, None);

    let (entry, bytes) = spool.read(&id, usize::MAX).unwrap();
    assert_eq!(bytes, body);
    assert_eq!(entry.size, body.len() as u64);
    let (_, head) = spool.read(&id, 10).unwrap();
    assert_eq!(head, &body[..10]);
}

#[test]
fn temp_files_are_never_listed_and_vanish_on_drop() {
    let dir = TestDir::new("spool-temp");
    let spool = prepared(&dir);
    let queue = spool.root().join("queue");
    let mut w = spool.create(&envelope("s@x", &["r@x"])).unwrap();
    w.write_all(b"half a message").unwrap();
    w.flush().unwrap();
    let in_progress = names(&queue);
    assert_eq!(in_progress.len(), 1);
    assert!(in_progress[0].starts_with('.'), "{in_progress:?}");
    assert!(spool.list().unwrap().is_empty());
    drop(w);
    assert!(
        names(&queue).is_empty(),
        "temp file left: {:?}",
        names(&queue)
    );

    // A maildrop message being written is not ingested either.
    let mut w = spool.create_maildrop(&envelope("s@x", &["r@x"])).unwrap();
    w.write_all(b"still typing").unwrap();
    w.flush().unwrap();
    let report = spool.ingest_maildrop(1 << 20).unwrap();
    assert_eq!((report.accepted, report.refused), (0, 0));
    assert!(spool.list().unwrap().is_empty());
    w.commit().unwrap();
    assert_eq!(spool.ingest_maildrop(1 << 20).unwrap().accepted, 1);
    assert_eq!(spool.list().unwrap().len(), 1);
}

#[test]
fn prepare_sets_modes_fixes_them_and_is_idempotent() {
    let dir = TestDir::new("spool-prepare");
    let spool = Spool::new(dir.join("var/spool/smtp_bridge"));
    for _ in 0..2 {
        spool.prepare(None).unwrap();
        assert_eq!(mode(spool.root()), 0o755);
        assert_eq!(mode(&spool.root().join("maildrop")), 0o1733);
        assert_eq!(mode(&spool.root().join("queue")), 0o700);
        assert_eq!(mode(&spool.root().join("failed")), 0o700);
    }
    fs::set_permissions(
        spool.root().join("queue"),
        fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    fs::set_permissions(
        spool.root().join("maildrop"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    spool.prepare(None).unwrap();
    assert_eq!(mode(&spool.root().join("queue")), 0o700);
    assert_eq!(mode(&spool.root().join("maildrop")), 0o1733);

    // A world-writable directory is a configuration mistake, not something to "fix".
    let tmp = dir.join("tmp");
    fs::create_dir(&tmp).unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777)).unwrap();
    assert!(Spool::new(&tmp).prepare(None).is_err());
    assert_eq!(mode(&tmp), 0o1777);

    // A symlink in place of a subdirectory is refused, not followed.
    let elsewhere = dir.join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o750)).unwrap();
    fs::remove_dir(spool.root().join("failed")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, spool.root().join("failed")).unwrap();
    assert!(spool.prepare(None).is_err());
    assert_eq!(mode(&elsewhere), 0o750);
}

#[test]
fn prepare_gives_the_spool_to_its_owner_and_root_writes_stay_readable() {
    if !common::require_root() {
        return;
    }
    let dir = TestDir::new("spool-owner");
    let spool = Spool::new(dir.join("spool"));
    spool.prepare(Some((65534, 65534))).unwrap();
    for sub in ["", "maildrop", "queue", "failed"] {
        let meta = fs::metadata(spool.root().join(sub)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534), "{sub}");
    }
    assert_eq!(mode(&spool.root().join("maildrop")), 0o1733);
    // Root (say `sendmail -q` from root's crontab) writes files the daemon can still read.
    let id = queue_message(&spool, &envelope("s@x", &["r@x"]), b"x\n");
    spool
        .defer(&id, SystemTime::now(), "connection refused")
        .unwrap();
    let _lock = spool.lock_runner(false).unwrap().unwrap();
    spool.set_backlog(true).unwrap();
    for path in [
        spool.root().join("queue").join(&id.0),
        spool.root().join("queue").join(format!("{id}.retry")),
        spool.root().join("queue.lock"),
        spool.root().join("backlog"),
    ] {
        assert_eq!(
            fs::metadata(&path).unwrap().uid(),
            65534,
            "{}",
            path.display()
        );
    }
}

#[test]
fn crash_leftovers_are_ignored_then_cleaned_by_prepare() {
    let dir = TestDir::new("spool-leftovers");
    let spool = prepared(&dir);
    let queue = spool.root().join("queue");
    let id = queue_message(&spool, &envelope("s@x", &["r@x"]), b"keep me\n");
    // A process that died while writing: its pid is gone.
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stray = queue.join(format!(".tmp.{dead}.0123456789abcdef"));
    fs::write(&stray, b"half a messa").unwrap();
    let stray_drop = spool
        .root()
        .join("maildrop")
        .join(format!(".tmp.{dead}.feedfacefeedface"));
    fs::write(&stray_drop, b"half").unwrap();
    // A writer of this very process is still at work: its temp file stays.
    let mut live = spool.create(&envelope("s@x", &["r@x"])).unwrap();
    live.write_all(b"in progress").unwrap();
    // Retry state whose message was removed just before a crash.
    let orphan = queue.join("00000000000001000000000001.retry");
    fs::write(&orphan, b"attempts 1\n").unwrap();

    let listed: Vec<QueueId> = spool.list().unwrap().into_iter().map(|e| e.id).collect();
    assert_eq!(listed, vec![id.clone()]);

    spool.prepare(None).unwrap();
    assert!(!stray.exists());
    assert!(!stray_drop.exists());
    assert!(!orphan.exists());
    let left = names(&queue);
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.contains(&id.0));
    let live_id = live.commit().unwrap();
    assert_eq!(spool.list().unwrap().len(), 2);
    assert!(live_id > id);
}

#[test]
fn ids_increase_across_threads_and_processes() {
    let threads: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(|| (0..2000).map(|_| QueueId::generate()).collect::<Vec<_>>()))
        .collect();
    let mut all = HashSet::new();
    for t in threads {
        let ids = t.join().unwrap();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "not increasing in a thread"
        );
        for id in ids {
            assert!(id.is_valid());
            assert!(all.insert(id), "duplicate ID");
        }
    }
    // Parent, child, parent, child…: each ID sorts after the one handed out before it, in
    // whatever process.
    let mut last = QueueId::generate();
    for _ in 0..3 {
        let child = QueueId(child_value(&run_child("id", Path::new("-"), None), "id"));
        assert!(child.is_valid(), "{child}");
        assert!(child > last, "child {child} <= {last}");
        let mine = QueueId::generate();
        assert!(mine > child, "{mine} <= child {child}");
        last = mine;
    }
}

#[test]
fn list_is_commit_order_across_processes_and_maildrop() {
    let dir = TestDir::new("spool-order");
    let spool = prepared(&dir);
    let root = spool.root().to_path_buf();
    let child = || QueueId(child_value(&run_child("commit", &root, None), "id"));
    // Committed one after the other, alternating processes and the two directories.
    let expected = vec![
        queue_message(&spool, &envelope("1@x", &["r@x"]), b"1"),
        child(),
        drop_message(&spool, &envelope("3@x", &["r@x"]), b"3"),
        queue_message(&spool, &envelope("4@x", &["r@x"]), b"4"),
        drop_message(&spool, &envelope("5@x", &["r@x"]), b"5"),
        child(),
    ];
    let report = spool.ingest_maildrop(1 << 20).unwrap();
    assert_eq!((report.accepted, report.refused), (2, 0));
    let listed: Vec<QueueId> = spool.list().unwrap().into_iter().map(|e| e.id).collect();
    assert_eq!(listed, expected, "maildrop messages keep their place");
    assert!(names(&root.join("maildrop")).is_empty());
}

#[test]
fn an_unprivileged_user_can_drop_mail_but_not_queue_it() {
    if !common::require_root() {
        return;
    }
    let dir = TestDir::new("spool-nobody");
    let spool = prepared(&dir);
    let out = run_child("maildrop", spool.root(), Some(65534));
    let id = QueueId(child_value(&out, "id"));
    assert_eq!(child_value(&out, "queue"), "Some(PermissionDenied)");
    let dropped = names(&spool.root().join("maildrop"));
    assert_eq!(dropped.len(), 1);
    assert!(dropped[0].starts_with(&format!("{id}.")), "{dropped:?}");
    let path = spool.root().join("maildrop").join(&dropped[0]);
    assert_eq!(mode(&path), 0o644);
    assert_eq!(fs::metadata(&path).unwrap().uid(), 65534);

    assert_eq!(spool.ingest_maildrop(1 << 20).unwrap().accepted, 1);
    let list = spool.list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, id, "the maildrop ID is kept");
    assert_eq!(
        list[0].envelope.origin,
        Origin::Local {
            uid: 65534,
            user: "nobody".into(),
            full_name: None,
        }
    );
    let (_, body) = spool.read(&id, 100).unwrap();
    assert_eq!(body, b"dropped\n");
}

/// A file outside the spool that a hostile maildrop entry points at, and proof that it was
/// not touched.
struct Target {
    path: PathBuf,
    content: Vec<u8>,
    mtime: i64,
    ino: u64,
}

impl Target {
    fn new(path: PathBuf, content: &[u8]) -> Target {
        fs::write(&path, content).unwrap();
        let meta = fs::metadata(&path).unwrap();
        Target {
            path,
            content: content.to_vec(),
            mtime: meta.mtime_nsec() + meta.mtime() * 1_000_000_000,
            ino: meta.ino(),
        }
    }

    fn assert_untouched(&self) {
        let meta = fs::metadata(&self.path).unwrap();
        assert_eq!(fs::read(&self.path).unwrap(), self.content);
        assert_eq!(meta.mtime_nsec() + meta.mtime() * 1_000_000_000, self.mtime);
        assert_eq!(meta.ino(), self.ino);
        assert_eq!(meta.nlink(), 1);
    }
}

/// A well-formed maildrop file's content, claiming to come from root.
fn forged(body: &str) -> Vec<u8> {
    format!(
        "{MAGIC}\narrival 1700000000.000000\norigin local 0 root\nsender root\nrcpt owner@x\n\n{body}"
    )
    .into_bytes()
}

#[test]
fn maildrop_refuses_links_fifos_devices_directories_oversize_and_garbage() {
    let dir = TestDir::new("spool-hostile");
    let spool = prepared(&dir);
    let maildrop = spool.root().join("maildrop");
    let max_size = 1000;

    // Valid-looking content everywhere, so that only the checks stand between it and the
    // queue.
    let symlink_target = Target::new(dir.join("secret"), &forged("the symlink target"));
    std::os::unix::fs::symlink(&symlink_target.path, maildrop.join("A-symlink")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/x", maildrop.join("B-dangling")).unwrap();
    let hardlink_target = Target::new(dir.join("linked"), &forged("the hard link target"));
    fs::hard_link(&hardlink_target.path, maildrop.join("C-hardlink")).unwrap();
    nix::unistd::mkfifo(
        &maildrop.join("D-fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    fs::create_dir(maildrop.join("E-directory")).unwrap();
    fs::write(maildrop.join("F-oversize"), forged(&"x".repeat(5000))).unwrap();
    let sparse = fs::File::create(maildrop.join("G-huge")).unwrap();
    sparse.set_len(max_size + MAX_HEADER_BYTES + 1).unwrap();
    drop(sparse);
    let garbage = b"\x00\x01 this is not a spool file\n\nat all".to_vec();
    fs::write(maildrop.join("H-garbage"), &garbage).unwrap();
    fs::write(
        maildrop.join("I-truncated"),
        b"smtp_bridge-spool 1\narrival 1",
    )
    .unwrap();
    let mut expected_refused = 9;
    if common::require_root() {
        nix::sys::stat::mknod(
            &maildrop.join("J-device"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
        expected_refused += 1;
    }
    // And two real messages among them, one with a name full of control characters.
    fs::write(maildrop.join("K-fine"), forged("fine")).unwrap();
    fs::write(maildrop.join("L-evil\nname\x1b[2J"), forged("also fine")).unwrap();

    let report = spool.ingest_maildrop(max_size).unwrap();
    assert_eq!(report.accepted, 2);
    assert_eq!(report.refused, expected_refused);

    symlink_target.assert_untouched();
    hardlink_target.assert_untouched();
    assert!(names(&maildrop).is_empty(), "left: {:?}", names(&maildrop));

    let list = spool.list().unwrap();
    let bodies: Vec<Vec<u8>> = list
        .iter()
        .map(|e| spool.read(&e.id, 1000).unwrap().1)
        .collect();
    assert_eq!(bodies, vec![b"fine".to_vec(), b"also fine".to_vec()]);
    // The claimed origin (uid 0, "root") is replaced by the file's owner, and the claimed
    // arrival (years ago) by the time the file was renamed into maildrop/.
    let me = nix::unistd::geteuid().as_raw();
    let recent = SystemTime::now() - Duration::from_secs(600);
    for entry in &list {
        match &entry.envelope.origin {
            Origin::Local { uid, .. } => assert_eq!(*uid, me),
            other => panic!("origin {other:?}"),
        }
        assert!(
            entry.envelope.arrival > recent,
            "{:?}",
            entry.envelope.arrival
        );
    }

    // Regular files that cannot be queued (unparsable, oversize) are kept in failed/ with a
    // reason, never deleted: sendmail acknowledged them.
    let failed = spool.root().join("failed");
    let kept = names(&failed);
    assert_eq!(kept.len(), 8, "{kept:?}");
    let contents: Vec<Vec<u8>> = kept
        .iter()
        .filter(|n| !n.ends_with(".reason"))
        .map(|n| fs::read(failed.join(n)).unwrap())
        .collect();
    assert!(contents.contains(&garbage));
    let reasons: Vec<String> = kept
        .iter()
        .filter(|n| n.ends_with(".reason"))
        .map(|n| fs::read_to_string(failed.join(n)).unwrap())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("H-garbage")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("I-truncated")),
        "{reasons:?}"
    );
    for name in ["F-oversize", "G-huge"] {
        assert!(
            reasons
                .iter()
                .any(|r| r.contains(name) && r.contains("too big")),
            "{name}: {reasons:?}"
        );
    }
    assert!(contents.contains(&forged(&"x".repeat(5000))));
}

#[test]
fn lowered_size_limit_does_not_lose_acknowledged_maildrop_mail() {
    let dir = TestDir::new("spool-lowered-limit");
    let spool = prepared(&dir);
    // Spooled (and acknowledged with exit 0) under a generous limit...
    let body = vec![b'b'; 10_000];
    drop_message(&spool, &envelope("s@x", &["r@x"]), &body);
    let dropped = names(&spool.root().join("maildrop"));
    let content = fs::read(spool.root().join("maildrop").join(&dropped[0])).unwrap();
    // ...then ingested (by `mailq`, say) after the admin lowered it.
    let report = spool.ingest_maildrop(100).unwrap();
    assert_eq!((report.accepted, report.refused), (0, 1));
    assert!(spool.list().unwrap().is_empty());
    let failed = spool.root().join("failed");
    let kept: Vec<Vec<u8>> = names(&failed)
        .iter()
        .filter(|n| !n.ends_with(".reason"))
        .map(|n| fs::read(failed.join(n)).unwrap())
        .collect();
    assert_eq!(kept, vec![content], "the message is kept byte for byte");
}

#[test]
fn maildrop_claimed_id_and_arrival_cannot_jump_the_queue_or_backdate() {
    let dir = TestDir::new("spool-claims");
    let spool = prepared(&dir);
    let waiting = queue_message(&spool, &envelope("w@x", &["r@x"]), b"waiting");
    let maildrop = spool.root().join("maildrop");
    // ID time 0: ahead of everything.
    let early = "00000000000000000000000001";
    fs::write(maildrop.join(format!("{early}.aaaa")), forged("jumper")).unwrap();
    let report = spool.ingest_maildrop(1 << 20).unwrap();
    assert_eq!(report.accepted, 1);
    let list = spool.list().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].id, waiting, "waiting mail stays first");
    assert!(list.iter().all(|e| e.id.0 != early));
    // The claimed arrival (2023) is not believed: no expiry at the first failure.
    assert!(list[1].envelope.arrival > SystemTime::now() - Duration::from_secs(600));
}

#[test]
fn fail_never_overwrites_an_existing_failed_message() {
    let dir = TestDir::new("spool-fail-noreplace");
    let spool = prepared(&dir);
    let id = queue_message(&spool, &envelope("a@x", &["r@x"]), b"second");
    let failed = spool.root().join("failed");
    fs::write(failed.join(&id.0), b"first").unwrap();
    fs::write(failed.join(format!("{id}.reason")), b"first reason").unwrap();
    spool.fail(&id, "lifetime expired", true).unwrap();
    assert_eq!(fs::read(failed.join(&id.0)).unwrap(), b"first");
    assert_eq!(
        fs::read(failed.join(format!("{id}.reason"))).unwrap(),
        b"first reason"
    );
    let moved = failed.join(format!("{id}-1"));
    assert!(fs::read(&moved).unwrap().ends_with(b"second"));
    let reason = fs::read_to_string(failed.join(format!("{id}-1.reason"))).unwrap();
    assert!(reason.contains("lifetime expired"), "{reason}");
    // The attempt that just failed is counted, as the log line counts it.
    assert!(reason.contains("attempts: 1\n"), "{reason}");
    assert!(spool.list().unwrap().is_empty());
}

/// `smtp_bridge --requeue`: what failed/ kept goes back into the queue in its place by
/// arrival, without its reason and with a fresh retry state; mailq says what failed/ holds
/// until then.
#[test]
fn failed_messages_are_requeued_in_their_place() {
    let dir = TestDir::new("spool-requeue");
    let spool = prepared(&dir);
    let first = queue_message(&spool, &envelope("a@x", &["r@x"]), b"first");
    let second = queue_message(&spool, &envelope("b@x", &["r@x"]), b"second");
    spool.defer(&first, SystemTime::now(), "HTTP 503").unwrap();
    spool.fail(&first, "lifetime expired", true).unwrap();
    let config = dir.join("c.toml");
    fs::write(
        &config,
        format!("spool_dir = \"{}\"\n", spool.root().display()),
    )
    .unwrap();
    fs::set_permissions(&config, fs::Permissions::from_mode(0o644)).unwrap();
    let (listing, _) = smtp_bridge::showq::queue_listing(&spool, 1 << 20).unwrap();
    assert!(
        listing.contains("-- 1 message(s) kept in failed/ with the reason")
            && listing.ends_with("-- 1 Kbytes in 1 Request.\n"),
        "{listing}"
    );
    let requeue = |which: &str| {
        Command::new(common::daemon_bin())
            .args(["--config", config.to_str().unwrap(), "--requeue", which])
            .output()
            .unwrap()
    };
    let unknown = requeue("0000");
    assert_eq!(unknown.status.code(), Some(66), "{unknown:?}");
    let out = requeue("all");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{first}: requeued\n")
    );
    let ids: Vec<QueueId> = spool.list().unwrap().into_iter().map(|e| e.id).collect();
    assert_eq!(ids, vec![first.clone(), second], "in arrival order");
    let entry = &spool.list().unwrap()[0];
    assert_eq!(entry.attempts, 0);
    assert!(names(&spool.root().join("failed")).is_empty());
    // The daemon is told to look.
    assert!(spool.maildrop_marked());
    let again = requeue("all");
    assert_eq!(
        String::from_utf8_lossy(&again.stdout).trim(),
        format!("nothing in {}/failed", spool.root().display())
    );
    // A maildrop file a local user left, set aside, is never trusted into the queue: its
    // envelope is that user's word (as root, where such a file can be made here).
    if nix::unistd::geteuid().is_root() {
        let theirs = spool
            .root()
            .join("failed")
            .join("0661AAAAAAAAAA000000000001");
        fs::write(
            &theirs,
            format!(
                "{}\narrival 1000000000.000000\norigin local 0 root\nsender root\nrcpt r@x\n\nSubject: forged\n\nx\n",
                smtp_bridge::spool::MAGIC
            ),
        )
        .unwrap();
        std::os::unix::fs::chown(&theirs, Some(4242), Some(4242)).unwrap();
        let out = requeue("all");
        assert!(out.status.success(), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("not requeued: a maildrop file of uid 4242"),
            "{err}"
        );
        let out = requeue("0661AAAAAAAAAA000000000001");
        assert_eq!(out.status.code(), Some(77), "{out:?}");
        assert!(theirs.exists());
        assert_eq!(spool.list().unwrap().len(), 2);
    }
}

/// A failed message whose queue ID is taken by one waiting now goes back under a fresh ID,
/// and the waiting one keeps its retry state.
#[test]
fn a_requeue_under_a_taken_id_leaves_the_waiting_message_alone() {
    let dir = TestDir::new("spool-requeue-taken");
    let spool = prepared(&dir);
    let waiting = queue_message(&spool, &envelope("a@x", &["r@x"]), b"waiting");
    spool
        .defer(&waiting, SystemTime::now(), "HTTP 503")
        .unwrap();
    let queue = spool.root().join("queue");
    fs::copy(
        queue.join(&waiting.0),
        spool.root().join("failed").join(&waiting.0),
    )
    .unwrap();
    let report = spool.requeue_failed(None).unwrap();
    assert_eq!(report.requeued.len(), 1, "{report:?}");
    assert_ne!(report.requeued[0], waiting);
    assert!(queue.join(format!("{waiting}.retry")).is_file());
    assert_eq!(spool.list().unwrap()[0].attempts, 1);
}

#[test]
fn a_full_disk_leaves_no_partial_file_and_keeps_the_maildrop() {
    let dir = TestDir::new("spool-full");
    let spool = prepared(&dir);
    // A message the child will fail to copy into queue/ (bigger than its file size limit).
    let pending = drop_message(&spool, &envelope("s@x", &["r@x"]), &vec![b'm'; 100_000]);
    let before = names(&spool.root().join("maildrop"));

    let out = run_child("fsize", spool.root(), None);
    let efbig = format!("Some({})", nix::errno::Errno::EFBIG as i32);
    for key in ["queue", "edge", "maildrop", "ingest"] {
        assert_eq!(child_value(&out, key), efbig, "{key}");
    }
    assert!(names(&spool.root().join("queue")).is_empty());
    assert!(names(&spool.root().join("failed")).is_empty());
    let mut after = names(&spool.root().join("maildrop"));
    after.retain(|n| n != smtp_bridge::spool::MAILDROP_MARK);
    assert_eq!(
        after, before,
        "the maildrop message is still there, and nothing else"
    );
    // The ingestion that stopped early sets the backlog, so later mail queues behind what
    // it left.
    assert!(spool.has_backlog());
    // With room again, it goes through.
    assert_eq!(spool.ingest_maildrop(1 << 20).unwrap().accepted, 1);
    assert_eq!(spool.list().unwrap()[0].id, pending);
}

#[test]
fn defer_remove_and_fail_keep_state_atomically() {
    let dir = TestDir::new("spool-state");
    let spool = prepared(&dir);
    let queue = spool.root().join("queue");
    let a = queue_message(&spool, &envelope("a@x", &["r@x"]), b"a");
    let b = queue_message(&spool, &envelope("b@x", &["r1@x", "r2@x"]), b"b");
    let next = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
    spool.defer(&a, next, "connection refused").unwrap();
    spool
        .defer(&a, next + Duration::from_secs(20), "HTTP 503\r\nrcpt evil")
        .unwrap();
    let list = spool.list().unwrap();
    assert_eq!(list.len(), 2, "the sidecar is not a message");
    assert_eq!(list[0].attempts, 2);
    assert_eq!(list[0].next_attempt, next + Duration::from_secs(20));
    assert_eq!(list[0].last_error.as_deref(), Some("HTTP 503\r\nrcpt evil"));
    assert_eq!(list[1].attempts, 0);
    assert!(
        names(&queue).iter().all(|n| !n.starts_with('.')),
        "no temp left"
    );

    let missing = QueueId("00000000000001000000000001".into());
    assert_eq!(
        spool.defer(&missing, next, "x").unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );
    assert!(!queue.join(format!("{missing}.retry")).exists());
    for bad in ["../failed/x", "", "abc"] {
        let bad = QueueId(bad.into());
        assert_eq!(
            spool.read(&bad, 1).unwrap_err().kind(),
            std::io::ErrorKind::InvalidInput
        );
        assert!(spool.remove(&bad).is_err());
    }

    spool
        .fail(&b, "lifetime expired: connection refused", true)
        .unwrap();
    let failed = spool.root().join("failed");
    assert!(fs::read(failed.join(&b.0)).unwrap().ends_with(
        b"

b"
    ));
    let reason = fs::read_to_string(failed.join(format!("{b}.reason"))).unwrap();
    assert!(
        reason.contains("lifetime expired: connection refused"),
        "{reason}"
    );
    assert!(reason.contains("<r2@x>"), "{reason}");

    spool.remove(&a).unwrap();
    assert!(names(&queue).is_empty(), "{:?}", names(&queue));
    assert!(spool.list().unwrap().is_empty());
}

#[test]
fn runner_lock_is_exclusive_and_backlog_marker_is_public() {
    let dir = TestDir::new("spool-lock");
    let spool = prepared(&dir);
    let first = spool.lock_runner(false).unwrap();
    assert!(first.is_some());
    assert!(spool.lock_runner(false).unwrap().is_none());
    let other = spool.clone();
    let waiter = std::thread::spawn(move || other.lock_runner(true).unwrap().is_some());
    std::thread::sleep(Duration::from_millis(50));
    drop(first);
    assert!(waiter.join().unwrap());

    assert!(!spool.has_backlog());
    spool.set_backlog(true).unwrap();
    spool.set_backlog(true).unwrap();
    assert!(spool.has_backlog());
    assert_eq!(mode(&spool.root().join("backlog")), 0o644);
    spool.set_backlog(false).unwrap();
    spool.set_backlog(false).unwrap();
    assert!(!spool.has_backlog());
}

#[test]
fn concurrent_ingestions_copy_each_entry_once() {
    let dir = TestDir::new("spool-ingest-race");
    let spool = prepared(&dir);
    let dropped: Vec<QueueId> = (0..40)
        .map(|n| {
            drop_message(
                &spool,
                &envelope("s@x", &["r@x"]),
                format!("{n}").as_bytes(),
            )
        })
        .collect();
    let racers: Vec<_> = (0..4)
        .map(|_| {
            let spool = spool.clone();
            std::thread::spawn(move || spool.ingest_maildrop(1 << 20).unwrap().accepted)
        })
        .collect();
    let accepted: usize = racers.into_iter().map(|r| r.join().unwrap()).sum();
    assert_eq!(accepted, 40);
    let listed: Vec<QueueId> = spool.list().unwrap().into_iter().map(|e| e.id).collect();
    assert_eq!(
        listed, dropped,
        "each once, in order, under its maildrop ID"
    );
}

#[test]
fn group_commit_makes_a_batch_durable_with_one_directory_sync() {
    let dir = TestDir::new("spool-group");
    let spool = prepared(&dir);
    let ids: Vec<QueueId> = (0..5)
        .map(|n| {
            let mut w = spool.create(&envelope("s@x", &["r@x"])).unwrap();
            w.write_all(format!("message {n}").as_bytes()).unwrap();
            w.commit_file().unwrap()
        })
        .collect();
    spool.sync_dir().unwrap();
    let listed: Vec<QueueId> = spool.list().unwrap().into_iter().map(|e| e.id).collect();
    assert_eq!(listed, ids);
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(
            spool.read(id, 100).unwrap().1,
            format!("message {n}").as_bytes()
        );
    }
}

#[test]
fn a_maildrop_name_cannot_take_over_a_queued_id_or_jump_to_the_future() {
    let dir = TestDir::new("spool-steal");
    let spool = prepared(&dir);
    let victim = queue_message(&spool, &envelope("victim@x", &["r@x"]), b"original");
    let maildrop = spool.root().join("maildrop");
    fs::write(maildrop.join(format!("{victim}.aaaa")), forged("hijack")).unwrap();
    let future = "FFFFFFFFFFFFFF000000000001";
    fs::write(
        maildrop.join(format!("{future}.bbbb")),
        forged("from the future"),
    )
    .unwrap();
    let report = spool.ingest_maildrop(1 << 20).unwrap();
    assert_eq!(report.accepted, 2);
    assert_eq!(spool.read(&victim, 100).unwrap().1, b"original");
    let list = spool.list().unwrap();
    assert_eq!(list.len(), 3);
    assert_eq!(list[0].id, victim);
    assert!(list.iter().all(|e| e.id.0 != future));
    let bodies: Vec<Vec<u8>> = list[1..]
        .iter()
        .map(|e| spool.read(&e.id, 100).unwrap().1)
        .collect();
    assert_eq!(
        bodies,
        vec![b"hijack".to_vec(), b"from the future".to_vec()]
    );
}

/// The full name (`sendmail -F`) of a maildrop file is kept when it is taken in, while the
/// claimed origin is replaced; a hostile one is cut or refused, never acted on.
#[test]
fn maildrop_keeps_the_full_name() {
    let dir = TestDir::new("spool-fullname");
    let spool = prepared(&dir);
    let me = nix::unistd::geteuid().as_raw();
    let mut env = envelope("jane@x", &["r@x"]);
    env.origin = Origin::Local {
        uid: 4242,
        user: "claimed".into(),
        full_name: Some("Jane\nRoe \u{1b}[2J".into()),
    };
    let id = drop_message(&spool, &env, b"Subject: s\n\nx\n");
    assert_eq!(spool.ingest_maildrop(1 << 20).unwrap().accepted, 1);
    let (entry, body) = spool.read(&id, 100).unwrap();
    assert_eq!(body, b"Subject: s\n\nx\n");
    match &entry.envelope.origin {
        Origin::Local { uid, full_name, .. } => {
            assert_eq!(*uid, me);
            assert_eq!(full_name.as_deref(), Some("Jane\nRoe \u{1b}[2J"));
        }
        other => panic!("origin {other:?}"),
    }
    spool.remove(&id).unwrap();

    // Written by hand: a name far beyond what `sendmail` writes is cut; a full name with
    // an SMTP origin is no file `sendmail` wrote, and is set aside.
    let maildrop = spool.root().join("maildrop");
    let huge = format!(
        "{MAGIC}\narrival 1.000000\norigin local 1 a\nfullname {}\nsender s\n\nx",
        "%0A".repeat(20_000)
    );
    fs::write(maildrop.join("huge"), huge).unwrap();
    let smtp =
        format!("{MAGIC}\narrival 1.000000\norigin smtp 127.0.0.1:1 h\nfullname x\nsender s\n\nx");
    fs::write(maildrop.join("smtp"), smtp).unwrap();
    let report = spool.ingest_maildrop(1 << 20).unwrap();
    assert_eq!((report.accepted, report.refused), (1, 1), "{report:?}");
    let list = spool.list().unwrap();
    assert_eq!(list.len(), 1);
    let name = list[0].envelope.origin.full_name().unwrap();
    assert_eq!(name, "\n".repeat(smtp_bridge::envelope::MAX_FULL_NAME));
    assert_eq!(
        names(&spool.root().join("failed")).len(),
        2,
        "message and reason"
    );
}

// ---- spare files -----------------------------------------------------------------------

/// A prepared spool, an empty pool of spares (1 MiB) and an envelope, for the spare tests.
fn spare_setup(label: &str) -> (TestDir, Spool, Spares, Envelope) {
    let dir = TestDir::new(label);
    let spool = prepared(&dir);
    (
        dir,
        spool,
        Spares::new(1 << 20),
        envelope("a@example.org", &["root"]),
    )
}

/// Retires a queued message as a spare, makes that durable and hands it to `spares`; returns
/// the spare's path and inode.
fn retire(spool: &Spool, spares: &Spares, id: &QueueId) -> (PathBuf, u64) {
    let (spare, len) = spool
        .retire_unsynced(id, spares.room())
        .unwrap()
        .expect("kept as a spare");
    assert_eq!(fs::metadata(&spare).unwrap().len(), len);
    spool.sync_queue_dir().unwrap();
    let inode = fs::metadata(&spare).unwrap().ino();
    spares.give(vec![(spare.clone(), len)]);
    (spare, inode)
}

/// The spool file of `id`, whole.
fn file_of(spool: &Spool, id: &QueueId) -> Vec<u8> {
    fs::read(spool.root().join("queue").join(&id.0)).unwrap()
}

/// A delivered message's file is written over by the next message, in each of the ways the
/// spool worker commits (fdatasync then rename, `commit`, one syncfs for a batch): the same
/// inode, and exactly the new message, the longer old content cut off.
#[test]
fn a_spare_is_written_over_by_the_next_message_and_cut_to_its_length() {
    let (_dir, spool, spares, env) = spare_setup("spool-spare");
    let fs_sync = spool.fs_sync().unwrap();
    for way in ["sync_data", "commit", "syncfs"] {
        let old = queue_message(&spool, &env, &[b'L'; 20_000]);
        let (spare, inode) = retire(&spool, &spares, &old);
        assert!(spool.ids().unwrap().is_empty(), "a spare is not a message");
        assert_eq!(spares.len(), 1);

        let mut w = spool.create_reusing(&env, &spares).unwrap();
        assert!(spares.is_empty(), "{way}: the spare was taken");
        w.write_all(b"short body\r\n").unwrap();
        let id = match way {
            "sync_data" => {
                w.sync_data().unwrap();
                let id = w.commit_file().unwrap();
                spool.sync_queue_dir().unwrap();
                id
            }
            "commit" => w.commit().unwrap(),
            _ => {
                fs_sync.sync_data(&mut [&mut w]).unwrap();
                let id = w.commit_file().unwrap();
                spool.sync_queue_dir().unwrap();
                id
            }
        };
        let path = spool.root().join("queue").join(&id.0);
        assert_eq!(
            fs::metadata(&path).unwrap().ino(),
            inode,
            "{way}: same inode"
        );
        assert!(!spare.exists(), "{way}: the spare became the message");
        let (entry, raw) = spool.read(&id, usize::MAX).unwrap();
        assert_eq!(raw, b"short body\r\n", "{way}");
        assert_eq!(entry.size, 12, "{way}");
        let whole = file_of(&spool, &id);
        assert!(whole.starts_with(MAGIC.as_bytes()), "{way}");
        assert!(
            whole.ends_with(b"\n\nshort body\r\n"),
            "{way}: nothing stale"
        );
        assert_eq!(names(&spool.root().join("queue")), vec![id.0.clone()]);
        spool.remove(&id).unwrap();
    }
}

/// A message written over a spare and then abandoned (a client that hung up, a failed
/// write) leaves nothing behind, like one written in a new file.
#[test]
fn an_abandoned_message_over_a_spare_leaves_nothing() {
    let (_dir, spool, spares, env) = spare_setup("spool-spare-abort");
    let old = queue_message(&spool, &env, b"old message\r\n");
    let (spare, _) = retire(&spool, &spares, &old);
    let mut w = spool.create_reusing(&env, &spares).unwrap();
    w.write_all(b"half a mess").unwrap();
    drop(w);
    assert!(!spare.exists());
    assert!(names(&spool.root().join("queue")).is_empty());
    assert!(spool.list().unwrap().is_empty());
}

/// Only small files within the budget are kept; the rest are unlinked as before, and a pool
/// never holds more than its budget.
#[test]
fn only_small_files_within_the_budget_become_spares() {
    let dir = TestDir::new("spool-spare-budget");
    let spool = prepared(&dir);
    let env = envelope("a@example.org", &["root"]);
    let queue = spool.root().join("queue");

    // Too large for a spare: unlinked.
    let big = queue_message(&spool, &env, &vec![b'B'; SPARE_MAX_BYTES as usize]);
    assert!(spool.retire_unsynced(&big, u64::MAX).unwrap().is_none());
    // No room left: unlinked.
    let small = queue_message(&spool, &env, b"small\r\n");
    assert!(spool.retire_unsynced(&small, 4095).unwrap().is_none());
    assert!(names(&queue).is_empty(), "{:?}", names(&queue));

    // A budget of two small files: the third one given is removed.
    let spares = Spares::new(2 * spare_charge(1));
    let mut given = Vec::new();
    for _ in 0..3 {
        let id = queue_message(&spool, &env, b"small\r\n");
        given.push(spool.retire_unsynced(&id, u64::MAX).unwrap().unwrap());
    }
    spool.sync_queue_dir().unwrap();
    let paths: Vec<PathBuf> = given.iter().map(|(p, _)| p.clone()).collect();
    spares.give(given);
    assert_eq!(spares.len(), 2);
    assert_eq!(spares.room(), 0);
    assert_eq!(paths.iter().filter(|p| p.exists()).count(), 2);
    assert_eq!(names(&queue).len(), 2);
}

/// Spares stay when the pool goes (the daemon stops), and the next start takes them up, if
/// no other process keeps them; anything under a spare's name that is not a plain file of
/// one link within the size limit is removed, a link's target untouched. `prepare` keeps
/// spares, and no listing shows them.
#[test]
fn spares_left_by_a_previous_run_are_taken_up_and_odd_ones_removed() {
    let dir = TestDir::new("spool-spare-adopt");
    let spool = prepared(&dir);
    let env = envelope("a@example.org", &["root"]);
    let queue = spool.root().join("queue");
    let (kept, inode) = {
        let spares = Spares::new(1 << 20);
        let id = queue_message(&spool, &env, b"delivered\r\n");
        retire(&spool, &spares, &id)
    };
    assert!(kept.exists(), "a spare outlives its pool");

    let target = dir.join("target");
    fs::write(&target, b"not ours").unwrap();
    std::os::unix::fs::symlink(&target, queue.join(".spare.link")).unwrap();
    fs::write(
        queue.join(".spare.big"),
        vec![b'x'; SPARE_MAX_BYTES as usize + 1],
    )
    .unwrap();
    fs::write(dir.join("other"), b"two links").unwrap();
    fs::hard_link(dir.join("other"), queue.join(".spare.hardlink")).unwrap();
    fs::create_dir(queue.join(".spare.dir")).unwrap();

    spool.prepare(None).unwrap();
    assert!(kept.exists(), "prepare keeps spares");
    assert!(spool.ids().unwrap().is_empty());
    assert!(spool.list().unwrap().is_empty());

    let spares = Spares::new(1 << 20);
    let keeper = spool
        .keep_spares(&spares)
        .unwrap()
        .expect("nobody else keeps them");
    assert_eq!(keeper.adopted(), 1);
    assert_eq!(spares.len(), 1);
    let left: Vec<String> = names(&queue);
    assert_eq!(left.len(), 2, "the spare and the directory: {left:?}");
    assert!(left.contains(&".spare.dir".to_owned()));
    assert_eq!(fs::read(&target).unwrap(), b"not ours");
    assert_eq!(fs::read(dir.join("other")).unwrap(), b"two links");
    // Only one process at a time keeps a spool's spares: two daemons on one spool must
    // never write over the same file.
    let other = Spares::new(1 << 20);
    assert!(spool.keep_spares(&other).unwrap().is_none());
    assert!(other.is_empty());

    let id = queue_reusing(&spool, &env, &spares, b"new\r\n");
    let path = queue.join(&id.0);
    assert_eq!(fs::metadata(path).unwrap().ino(), inode);
}

/// A spare that is gone, or that someone replaced with something else, is not written
/// over: the message goes to a new file.
#[test]
fn a_spare_that_changed_is_not_written_over() {
    let (dir, spool, spares, env) = spare_setup("spool-spare-gone");
    let a = queue_message(&spool, &env, b"a\r\n");
    let b = queue_message(&spool, &env, b"b\r\n");
    let (gone, _) = retire(&spool, &spares, &a);
    let (linked, _) = retire(&spool, &spares, &b);
    fs::remove_file(&gone).unwrap();
    let outside = dir.join("outside");
    fs::write(&outside, b"keep me").unwrap();
    fs::remove_file(&linked).unwrap();
    std::os::unix::fs::symlink(&outside, &linked).unwrap();

    let id = queue_reusing(&spool, &env, &spares, b"fresh\r\n");
    assert!(spares.is_empty());
    assert_eq!(spool.read(&id, 100).unwrap().1, b"fresh\r\n");
    assert_eq!(fs::read(&outside).unwrap(), b"keep me");
    assert!(!linked.exists() && fs::symlink_metadata(&linked).is_err());
    assert_eq!(names(&spool.root().join("queue")), vec![id.0]);
}

/// Once given up (a directory fsync failed), a pool hands nothing out and keeps nothing:
/// spares ready are removed, later ones unlinked.
#[test]
fn a_closed_pool_keeps_nothing() {
    let (_dir, spool, spares, env) = spare_setup("spool-spare-closed");
    let a = queue_message(&spool, &env, b"a\r\n");
    let (ready, _) = retire(&spool, &spares, &a);
    spares.close();
    assert!(!ready.exists());
    assert_eq!((spares.len(), spares.room()), (0, 0));
    let b = queue_message(&spool, &env, b"b\r\n");
    let (late, len) = spool.retire_unsynced(&b, u64::MAX).unwrap().unwrap();
    spares.give(vec![(late.clone(), len)]);
    assert!(!late.exists());
    let id = queue_reusing(&spool, &env, &spares, b"c\r\n");
    assert_eq!(names(&spool.root().join("queue")), vec![id.0]);
}

/// A message whose envelope cannot be written (a recipient longer than a header line may
/// be) is refused before any spare is taken: the pool keeps them all.
#[test]
fn a_refused_envelope_costs_no_spare() {
    let (_dir, spool, spares, env) = spare_setup("spool-spare-refused");
    let a = queue_message(&spool, &env, b"a\r\n");
    let (spare, _) = retire(&spool, &spares, &a);
    let huge = "x".repeat(70_000) + "@example.org";
    let bad = envelope("a@example.org", &[huge.as_str()]);
    assert!(spool.create_reusing(&bad, &spares).is_err());
    assert_eq!(spares.len(), 1);
    assert!(spare.exists());
}

/// The maildrop's mark and the backlog marker together: taking the maildrop in hands the
/// mark over to the backlog marker (set before the mark goes), and only a pass that finds
/// the queue empty and the maildrop unmarked clears it. A directory named like the mark
/// marks nothing and is removed when empty.
#[test]
fn the_maildrop_mark_hands_over_to_the_backlog() {
    let dir = TestDir::new("spool-mark");
    let spool = prepared(&dir);
    drop_message(&spool, &envelope("s@x", &["r@x"]), b"x");
    spool.mark_maildrop().unwrap();
    assert!(spool.maildrop_marked() && !spool.has_backlog());
    assert_eq!(spool.ingest_maildrop(1 << 20).unwrap().accepted, 1);
    assert!(!spool.maildrop_marked() && spool.has_backlog());
    // A pass that delivered nothing is not the one to clear it while mail waits.
    spool.settle_backlog(false).unwrap();
    assert!(spool.has_backlog(), "cleared with a message in queue/");
    let id = spool.ids().unwrap().remove(0);
    spool.remove(&id).unwrap();
    spool.mark_maildrop().unwrap();
    spool.settle_backlog(false).unwrap();
    assert!(spool.has_backlog(), "cleared with the maildrop marked");
    assert_eq!(spool.ingest_maildrop(1 << 20).unwrap().accepted, 0);
    spool.settle_backlog(false).unwrap();
    assert!(!spool.has_backlog());

    let fake = spool
        .root()
        .join("maildrop")
        .join(smtp_bridge::spool::MAILDROP_MARK);
    fs::create_dir(&fake).unwrap();
    assert!(!spool.maildrop_marked(), "a directory is no mark");
    spool.ingest_maildrop(1 << 20).unwrap();
    assert!(
        !fake.exists(),
        "an empty directory named like the mark stays"
    );
}

/// What a failed ingestion leaves: regular files only, and the oldest one dropped off after
/// a given moment (the hold's window), apart from the oldest of all.
#[test]
fn maildrop_left_counts_messages_and_the_oldest_within_a_window() {
    let dir = TestDir::new("spool-left");
    let spool = prepared(&dir);
    let now = std::time::SystemTime::now();
    let hour = std::time::Duration::from_secs(3600);
    assert_eq!(spool.maildrop_left(now).unwrap().entries, 0);
    drop_message(&spool, &envelope("s@x", &["r@x"]), b"one");
    drop_message(&spool, &envelope("s@x", &["r@x"]), b"two");
    fs::create_dir(spool.root().join("maildrop").join("not-a-message")).unwrap();
    let left = spool.maildrop_left(now - hour).unwrap();
    assert_eq!(left.entries, 2, "{left:?}");
    assert!(left.bytes > 6, "{left:?}");
    assert!(
        left.oldest_recent.is_some_and(|t| t > now - hour),
        "{left:?}"
    );
    let left = spool.maildrop_left(now + hour).unwrap();
    assert_eq!((left.entries, left.oldest_recent), (2, None), "{left:?}");
    // A spool whose maildrop is gone holds nothing.
    fs::remove_dir_all(spool.root().join("maildrop")).unwrap();
    assert_eq!(spool.maildrop_left(now).unwrap().entries, 0);
}
