//! Privilege and access, proven against the real binaries as root (every test fails under
//! CI when not run as root, and is skipped elsewhere).
//!
//! - Nothing runs as root once the daemon serves, in any thread, while every thread is busy
//!   (a session mid-DATA, the delivery thread inside a hanging request) and after a SIGHUP
//!   reload; on a privileged port other than 25, with no capability left in any set.
//!   (tests/privileges.rs reads the same fields once, idle, on port 25.)
//! - `allowed_clients` for IPv4, IPv6 (`::1`) and IPv4-mapped peers (a dual-stack `[::]`
//!   socket handed over the systemd way: the daemon's own `[::]` listeners are IPv6-only).
//! - Links, a FIFO and a device node planted in the maildrop by an unprivileged user are
//!   refused without their targets being touched, and the daemon keeps serving.
//! - A world- or group-writable config file is refused by both binaries with exit 78.
//! - No message body reaches the log at any log level (syslog captured with severities,
//!   and stderr).
//! - A burst of mail into a slow syslog loses no log line and keeps each message's lines in
//!   order.

mod common;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::daemon::{simple, Daemon, Smtp, Syslog, SOON};
use common::{Behaviour, StandInBridge, TestDir};

const NOBODY: u32 = 65534;
const NOGROUP: u32 = 65534;
/// An unprivileged uid that is neither root nor the daemon's user: the attacker.
const MALLORY: u32 = 4242;

fn field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name}: in {status}"))
        .trim()
}

/// Name and status of every thread of `pid`.
fn threads(pid: u32) -> Vec<(String, String)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| {
            let status = std::fs::read_to_string(e.unwrap().path().join("status")).unwrap();
            (field(&status, "Name").to_owned(), status)
        })
        .collect()
}

/// Every thread: uid and gid nobody in all four slots, no groups, no capability in any
/// set, no_new_privs.
fn assert_unprivileged(pid: u32) -> usize {
    let all = threads(pid);
    for (name, status) in &all {
        for (key, want) in [("Uid", NOBODY), ("Gid", NOGROUP)] {
            let ids: Vec<&str> = field(status, key).split_whitespace().collect();
            assert_eq!(
                ids,
                vec![want.to_string().as_str(); 4],
                "thread {name}: {key}"
            );
        }
        assert_eq!(field(status, "Groups"), "", "thread {name}: Groups");
        assert_eq!(field(status, "NoNewPrivs"), "1", "thread {name}");
        for caps in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
            assert_eq!(
                field(status, caps),
                "0000000000000000",
                "thread {name}: {caps}"
            );
        }
    }
    all.len()
}

/// A privileged port (< 1024, not 25) that is free now.
fn privileged_port() -> u16 {
    (700..1000)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port below 1024")
}

#[test]
fn no_thread_is_root_while_busy_and_after_reload() {
    if !common::require_root() {
        return;
    }
    let dir = TestDir::new("a-busy");
    let bridge = StandInBridge::start();
    let port = privileged_port();
    let config = common::write_config(
        &dir.path,
        &bridge.url,
        &format!("listen = [\"127.0.0.1:{port}\"]\nbridge_timeout = 600"),
    );
    let d = Daemon::start(&config, port);
    // Busy everywhere: the delivery thread inside a request that hangs, a session mid-DATA.
    bridge.set_behaviour(Behaviour::Hang);
    let mut c = d.client().unwrap();
    let (code, text) = c.message(&simple("held", "x")).unwrap();
    assert_eq!(code, 250, "{text}");
    assert!(common::wait_until(SOON, || bridge.requests() >= 1));
    let mut busy = d.client().unwrap();
    busy.start_message(&simple("mid-data", "half a message"))
        .unwrap();
    let n = assert_unprivileged(d.pid());
    assert!(
        n >= 3,
        "the loop, the spool worker and the delivery thread: {n}"
    );

    // A reload re-reads the config as nobody and starts nothing privileged.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    d.wait_log("reload", SOON);
    busy.end_message().unwrap();
    assert_eq!(busy.reply().unwrap().0, 250);
    assert_unprivileged(d.pid());
    bridge.set_behaviour(Behaviour::Accept);
    bridge.wait_for(2, Duration::from_secs(60));
    assert_unprivileged(d.pid());
}

// ---- allowed_clients ------------------------------------------------------------------

/// The first reply to a connection to `to`: 220 or 554 (0 when there is none).
fn first_reply(to: std::net::SocketAddr) -> u16 {
    let mut c = Smtp::connect(to).expect("connect");
    c.reply().map(|r| r.0).unwrap_or(0)
}

/// The daemon on two sockets of its own: `127.0.0.1:port` and `[::1]:port`.
fn own_listeners(dir: &TestDir, bridge: &StandInBridge, allowed: &str) -> Daemon {
    let port = common::free_port();
    let config = common::write_config(
        &dir.path,
        &bridge.url,
        &format!("listen = [\"127.0.0.1:{port}\", \"[::1]:{port}\"]\nallowed_clients = {allowed}"),
    );
    Daemon::start(&config, port)
}

/// The daemon on a dual-stack `[::]` socket handed over the systemd way (fd 3,
/// `LISTEN_FDS=1`): IPv4 clients arrive as `::ffff:127.0.0.1`.
fn dual_stack(dir: &TestDir, bridge: &StandInBridge, allowed: &str) -> Daemon {
    let listener = std::net::TcpListener::bind("[::]:0").unwrap();
    let config = common::write_config(
        &dir.path,
        &bridge.url,
        &format!("listen = [\"127.0.0.1:1\"]\nallowed_clients = {allowed}"),
    );
    activated(&listener, &config)
}

/// The daemon on `listener`, handed over as systemd does (fd 3, `LISTEN_FDS=1`, `LISTEN_PID`
/// the daemon's own); the caller may keep its own copy, as systemd keeps the socket.
fn activated(listener: &std::net::TcpListener, config: &Path) -> Daemon {
    let port = listener.local_addr().unwrap().port();
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ exec \"$0\" \"$@\"")
        .arg(common::daemon_bin())
        .arg("--config")
        .arg(config)
        .args(["--loglevel", "debug"])
        .env("LISTEN_FDS", "1");
    // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let listener = std::os::fd::BorrowedFd::borrow_raw(fd);
            if fd == 3 {
                nix::fcntl::fcntl(
                    listener,
                    nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
                )?;
            } else {
                std::mem::forget(nix::unistd::dup2_raw(listener, 3)?);
            }
            Ok(())
        });
    }
    Daemon::spawn(cmd, config, port).unwrap_or_else(|e| panic!("{}", e.stderr))
}

/// On systemd's socket, a stopping daemon leaves whoever waits in its queue (here at
/// max_connections) to the next instance instead of answering 421, which smtplib and
/// lettre do not retry: a restart loses no script's mail.
#[test]
fn a_restart_on_systemds_socket_leaves_waiting_clients_to_the_next_instance() {
    if !common::require_root() {
        return;
    }
    let bridge = StandInBridge::start();
    let dir = TestDir::new("a-restart");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = common::write_config(
        &dir.path,
        &bridge.url,
        "listen = [\"127.0.0.1:1\"]\nmax_connections = 1",
    );
    let mut first = activated(&listener, &config);
    let mut held = Smtp::greeted(first.addr()).unwrap();
    let waiting = std::net::TcpStream::connect(first.addr()).unwrap();
    first.wait_log("max_connections (1) reached", SOON);
    first.signal(nix::sys::signal::Signal::SIGTERM);
    first.wait_log("shutting down", SOON);
    // The session in flight finishes; then the daemon is gone.
    let (code, text) = held.message(&simple("held", "x")).unwrap();
    assert_eq!(code, 250, "{text}");
    held.cmd("QUIT").unwrap();
    assert!(first.wait_exit(SOON).success());
    // The next instance on the same socket greets the client that waited.
    let second = activated(&listener, &config);
    waiting.set_read_timeout(Some(SOON)).unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&waiting), &mut line).unwrap();
    assert!(line.starts_with("220 "), "the waiting client got {line:?}");
    drop(second);
    bridge.wait_for(1, SOON);
}

fn v4(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

fn v6(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port))
}

#[test]
fn allowed_clients_for_ipv4_ipv6_and_mapped_peers() {
    if !common::require_root() {
        return;
    }
    let bridge = StandInBridge::start();
    // (how the daemon listens, allowed_clients, reply to 127.0.0.1, reply to ::1)
    let table: &[(&str, &str, u16, u16)] = &[
        ("own", "[\"127.0.0.0/8\"]", 220, 554),
        ("own", "[\"::1/128\"]", 554, 220),
        ("own", "[\"127.0.0.0/8\", \"::1/128\"]", 220, 220),
        ("dual", "[\"127.0.0.1/32\"]", 220, 554),
        ("dual", "[\"::1/128\"]", 554, 220),
        // A mapped block written the IPv6 way means the same IPv4 block.
        ("dual", "[\"::ffff:127.0.0.0/104\"]", 220, 554),
        ("dual", "[\"10.0.0.0/8\"]", 554, 554),
    ];
    for (n, (how, allowed, want4, want6)) in table.iter().enumerate() {
        let dir = TestDir::new(&format!("a-allowed{n}"));
        let d = match *how {
            "own" => own_listeners(&dir, &bridge, allowed),
            _ => dual_stack(&dir, &bridge, allowed),
        };
        let got4 = first_reply(v4(d.port));
        let got6 = first_reply(v6(d.port));
        assert_eq!(
            (got4, got6),
            (*want4, *want6),
            "{how} allowed_clients = {allowed}:\n{}",
            d.log_text()
        );
        mapped_ipv4_peers_are_logged_as_ipv4(&d, *want4, *want6);
        // The one allowed gets through a whole message.
        if *want4 == 220 {
            let mut c = Smtp::greeted(v4(d.port)).unwrap();
            assert_eq!(c.message(&simple("allowed v4", "x")).unwrap().0, 250);
        }
    }
}

/// Regression: on a dual-stack socket an IPv4 client was logged (and recorded in the
/// envelope) as `::ffff:127.0.0.1`, while `allowed_clients` matched it as `127.0.0.1`.
fn mapped_ipv4_peers_are_logged_as_ipv4(d: &Daemon, want4: u16, want6: u16) {
    let verb = |code| if code == 554 { "reject" } else { "connect" };
    d.wait_log(&format!("{} from 127.0.0.1", verb(want4)), SOON);
    d.wait_log(&format!("{} from ::1", verb(want6)), SOON);
    assert!(!d.log_text().contains("::ffff:"), "{}", d.log_text());
}

// ---- the maildrop ---------------------------------------------------------------------

/// A file whose content, mtime, inode and link count must stay as they are.
struct Target {
    path: PathBuf,
    content: Vec<u8>,
    mtime: (i64, i64),
    ino: u64,
}

impl Target {
    fn new(path: PathBuf, content: &[u8], owner: u32, mode: u32) -> Target {
        std::fs::write(&path, content).unwrap();
        std::os::unix::fs::chown(&path, Some(owner), Some(owner)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        Target {
            path,
            content: content.to_vec(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ino: meta.ino(),
        }
    }

    fn assert_untouched(&self) {
        let meta = std::fs::metadata(&self.path).unwrap();
        assert_eq!(std::fs::read(&self.path).unwrap(), self.content);
        assert_eq!((meta.mtime(), meta.mtime_nsec()), self.mtime);
        assert_eq!(meta.ino(), self.ino);
        assert_eq!(meta.nlink(), 1, "{}", self.path.display());
    }
}

/// A well-formed maildrop file claiming to come from root.
fn forged(subject: &str) -> Vec<u8> {
    format!(
        "{}\narrival 1700000000.000000\norigin local 0 root\nsender root\nrcpt owner@x\n\nSubject: {subject}\n\nbody\n",
        smtp_bridge::spool::MAGIC
    )
    .into_bytes()
}

/// Runs `f` in a child process as `uid` (fork, setgid/setuid, exit 0 when `f` is Ok).
fn as_user(uid: u32, f: impl FnOnce() -> std::io::Result<()>) {
    // SAFETY: the test process forks; the child only makes system calls and exits.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            let ok = nix::unistd::setgroups(&[]).is_ok()
                && nix::unistd::setgid(nix::unistd::Gid::from_raw(uid)).is_ok()
                && nix::unistd::setuid(nix::unistd::Uid::from_raw(uid)).is_ok()
                && f().is_ok();
            // SAFETY: leave the child without running the parent's destructors.
            unsafe { nix::libc::_exit(if ok { 0 } else { 1 }) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            let status = nix::sys::wait::waitpid(child, None).unwrap();
            assert_eq!(
                status,
                nix::sys::wait::WaitStatus::Exited(child, 0),
                "as uid {uid}"
            );
        }
    }
}

#[test]
fn planted_links_fifo_and_device_are_refused_and_targets_untouched() {
    if !common::require_root() {
        return;
    }
    let (bridge, d) = common::daemon::setup("a-planted", "");
    let dir = d.dir();
    let maildrop = dir.join("spool").join("maildrop");
    assert_eq!(
        std::fs::metadata(&maildrop).unwrap().permissions().mode() & 0o7777,
        0o1733
    );

    // What the attacker wants the daemon to read: a file only the daemon's user may read
    // (as queue files are), and the attacker's own file, linked so it could be changed
    // after the daemon checked it.
    let secret = Target::new(
        dir.join("secret"),
        &forged("SECRET-OF-NOBODY"),
        NOBODY,
        0o600,
    );
    let attacker = dir.join("mallory");
    std::fs::create_dir(&attacker).unwrap();
    std::os::unix::fs::chown(&attacker, Some(MALLORY), Some(MALLORY)).unwrap();
    let own = attacker.join("own");
    let (secret_path, own_path, md) = (secret.path.clone(), own.clone(), maildrop.clone());
    as_user(MALLORY, move || {
        std::os::unix::fs::symlink(&secret_path, md.join("A-symlink"))?;
        std::fs::write(&own_path, forged("LINKED-BY-MALLORY"))?;
        std::fs::hard_link(&own_path, md.join("B-hardlink"))?;
        nix::unistd::mkfifo(
            &md.join("C-fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o666),
        )?;
        Ok(())
    });
    let own_meta = std::fs::metadata(&own).unwrap();
    let linked = Target {
        path: own.clone(),
        content: forged("LINKED-BY-MALLORY"),
        mtime: (own_meta.mtime(), own_meta.mtime_nsec()),
        ino: own_meta.ino(),
    };
    // Nobody but root can make a device node; root makes one and gives it to the attacker.
    // /dev/zero's numbers: reading it would never end.
    let device = maildrop.join("D-device");
    nix::sys::stat::mknod(
        &device,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 5),
    )
    .unwrap();
    nix::unistd::chown(
        &device,
        Some(nix::unistd::Uid::from_raw(MALLORY)),
        Some(nix::unistd::Gid::from_raw(MALLORY)),
    )
    .unwrap();
    // And an honest message from the same user beside them.
    let fine = maildrop.join("E-fine");
    as_user(MALLORY, {
        let fine = fine.clone();
        move || std::fs::write(&fine, forged("HONEST"))
    });

    // New mail nudges a delivery pass, which ingests the maildrop.
    let mut c = d.client().unwrap();
    assert_eq!(c.message(&simple("nudge", "x")).unwrap().0, 250);
    // One pass usually sees all five; a start-up pass that ran late (the delivery thread is
    // niced, and CI machines are busy) may have seen the first three already.
    let totals = |log: &str| {
        log.lines()
            .filter_map(|l| {
                l.split_once("maildrop: accepted=")?
                    .1
                    .split_once(", refused=")
            })
            .fold((0, 0), |(a, r), (acc, rest)| {
                (
                    a + acc.parse::<usize>().unwrap_or(0),
                    r + rest.trim().parse::<usize>().unwrap_or(0),
                )
            })
    };
    assert!(
        common::wait_until(SOON, || totals(&d.log_text()) == (1, 4)),
        "maildrop totals {:?}:\n{}",
        totals(&d.log_text()),
        d.log_text()
    );
    let got = bridge.wait_for(2, SOON);
    let texts: Vec<&str> = got.iter().map(|r| r.reply.as_str()).collect();
    assert!(texts.iter().any(|t| t.contains("HONEST")), "{texts:#?}");
    for t in &texts {
        assert!(!t.contains("SECRET-OF-NOBODY"), "{t}");
        assert!(!t.contains("LINKED-BY-MALLORY"), "{t}");
    }
    secret.assert_untouched();
    linked.assert_untouched();
    let left: Vec<String> = std::fs::read_dir(&maildrop)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "left in the maildrop: {left:?}");

    // Still serving, after the FIFO and the endless device.
    let mut c2 = d.client().unwrap();
    assert_eq!(c2.message(&simple("after", "x")).unwrap().0, 250);
    bridge.wait_for(3, SOON);
    assert!(!d.log_text().contains("panicked"));
}

/// A user who keeps a lease on a maildrop file (so that every open of it fails or waits)
/// holds back nobody's mail: the leased file is kept in failed/, the rest is delivered.
#[test]
fn a_leased_maildrop_file_holds_back_no_one() {
    if !common::require_root() || !common::require_tool("python3") {
        return;
    }
    let (bridge, d) = common::daemon::setup("a-leased", "");
    let maildrop = d.dir().join("spool").join("maildrop");
    let leased = maildrop.join("0-leased");
    // The holder takes the lease back each time the kernel breaks it, for up to a minute.
    let script = r#"
import fcntl, os, signal, sys, time
F_SETLEASE, F_WRLCK, F_UNLCK = 1024, 1, 2
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
os.write(fd, sys.argv[2].encode())
def again(sig, frame):
    fcntl.fcntl(fd, F_SETLEASE, F_UNLCK)
    fcntl.fcntl(fd, F_SETLEASE, F_WRLCK)
signal.signal(signal.SIGIO, again)
fcntl.fcntl(fd, F_SETLEASE, F_WRLCK)
print("held", flush=True)
time.sleep(60)
"#;
    let mut holder = Command::new("python3")
        .args(["-c", script])
        .arg(&leased)
        .arg(String::from_utf8(forged("LEASED")).unwrap())
        .uid(MALLORY)
        .gid(MALLORY)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "held");
    let fine = maildrop.join("E-fine");
    as_user(MALLORY, move || std::fs::write(&fine, forged("HONEST")));

    let mut c = d.client().unwrap();
    assert_eq!(c.message(&simple("nudge", "x")).unwrap().0, 250);
    let got = bridge.wait_for(2, SOON);
    let _ = holder.kill();
    let _ = holder.wait();
    let texts: Vec<&str> = got.iter().map(|r| r.reply.as_str()).collect();
    assert!(texts.iter().any(|t| t.contains("HONEST")), "{texts:#?}");
    assert!(!texts.iter().any(|t| t.contains("LEASED")), "{texts:#?}");
    // Kept, with its reason, for a human to look at.
    let failed = d.dir().join("spool").join("failed");
    let reasons: String = std::fs::read_dir(&failed)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "reason"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert!(reasons.contains("leased"), "{reasons}\n{}", d.log_text());
    assert!(!leased.exists());
}

/// A maildrop file with holes (a user's trick to make the spool pay, in real blocks, for
/// space their quota never did) is kept in failed/, not copied into the queue.
#[test]
fn a_sparse_maildrop_file_is_set_aside() {
    if !common::require_root() {
        return;
    }
    let (bridge, d) = common::daemon::setup("a-sparse", "");
    let maildrop = d.dir().join("spool").join("maildrop");
    let sparse = maildrop.join("0-sparse");
    let fine = maildrop.join("E-fine");
    as_user(MALLORY, move || {
        let f = std::fs::File::create(&sparse)?;
        std::io::Write::write_all(&mut &f, &forged("SPARSE"))?;
        f.set_len(8 << 20)?;
        std::fs::write(&fine, forged("HONEST"))
    });
    let mut c = d.client().unwrap();
    assert_eq!(c.message(&simple("nudge", "x")).unwrap().0, 250);
    let got = bridge.wait_for(2, SOON);
    let texts: Vec<&str> = got.iter().map(|r| r.reply.as_str()).collect();
    assert!(texts.iter().any(|t| t.contains("HONEST")), "{texts:#?}");
    assert!(!texts.iter().any(|t| t.contains("SPARSE")), "{texts:#?}");
    let reasons: String = std::fs::read_dir(d.dir().join("spool").join("failed"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "reason"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert!(
        reasons.contains("sparse file"),
        "{reasons}\n{}",
        d.log_text()
    );
}

/// What a local user can put in the 1733 maildrop must not stop anyone's mail: a `.tmp.`
/// directory (which stopped every ingestion, then, with the hold behind a maildrop that
/// cannot be taken in, all delivery, and made the daemon's next start fail), and an
/// envelope that fits the spool header as written but not once the daemon stamps its own
/// arrival time and origin (an error on every pass). Found by a review of the hold.
#[test]
fn a_users_tmp_directory_or_oversized_envelope_holds_back_no_one() {
    if !common::require_root() {
        return;
    }
    let (bridge, mut d) = common::daemon::setup("a-holds", "");
    let maildrop = d.dir().join("spool").join("maildrop");
    let (dir, fine, huge) = (
        maildrop.join(".tmp.x"),
        maildrop.join("E-fine"),
        maildrop.join("0-huge"),
    );
    // A header of exactly the spool's limit, with a short arrival time the daemon rewrites
    // longer.
    let limit = 4 << 20;
    let mut header = format!(
        "{}\narrival 1.000000\norigin local 0 a\nsender x@y\n",
        smtp_bridge::spool::MAGIC
    );
    while limit - 1 - header.len() > 60_006 {
        header.push_str(&format!("rcpt {}\n", "a".repeat(60_000)));
    }
    let room = limit - 1 - header.len();
    header.push_str(&format!("rcpt {}\n\n", "b".repeat(room - 6)));
    assert_eq!(header.len(), limit);
    header.push_str("Subject: HUGE\n\nbody\n");
    as_user(MALLORY, move || {
        std::fs::create_dir(&dir)?;
        std::fs::write(dir.join("inside"), "x")?;
        std::fs::write(&huge, header)?;
        std::fs::write(&fine, forged("HONEST"))
    });
    let mut c = d.client().unwrap();
    assert_eq!(c.message(&simple("after them", "x")).unwrap().0, 250);
    let got = bridge.wait_for(2, SOON);
    let texts: Vec<&str> = got.iter().map(|r| r.reply.as_str()).collect();
    assert!(texts.iter().any(|t| t.contains("HONEST")), "{texts:#?}");
    assert!(texts.iter().any(|t| t.contains("after them")), "{texts:#?}");
    let log = d.log_text();
    assert!(!log.contains("cannot ingest the maildrop"), "{log}");
    assert!(
        log.contains("0-huge"),
        "the oversized envelope is named: {log}"
    );
    // The directory stays (it is not ours to empty), and the next start does not trip on it.
    d.stop();
    let config = d.dir().join("smtp_bridge.conf");
    let again = Daemon::start(&config, d.port);
    let mut c = again.client().unwrap();
    assert_eq!(c.message(&simple("after a restart", "x")).unwrap().0, 250);
    bridge.wait_for(3, SOON);
}

/// A message an ordinary user's `sendmail` left in the maildrop (its own bridge attempt
/// failed) goes out within a few seconds: the drop-off marks the maildrop and the daemon
/// looks for the mark every second, instead of waiting for its 30-second look at an idle
/// spool.
#[test]
fn a_drop_off_is_picked_up_within_seconds() {
    if !common::require_root() {
        return;
    }
    let (bridge, d) = common::daemon::setup("a-dropoff", "");
    // Let the start-up pass finish, so that only the mark can bring the next one forward.
    d.wait_log("ready", SOON);
    std::thread::sleep(Duration::from_secs(1));
    // The shim's own configuration: the same spool, a bridge nobody listens on.
    let shim_dir = TestDir::new("a-dropoff-shim");
    let dead = format!("http://127.0.0.1:{}/replies", common::free_port());
    let text = std::fs::read_to_string(d.dir().join("smtp_bridge.conf"))
        .unwrap()
        .replace(&bridge.url, &dead);
    let shim_config = shim_dir.join("shim.conf");
    std::fs::write(&shim_config, text).unwrap();
    std::fs::set_permissions(&shim_config, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&shim_dir.path, std::fs::Permissions::from_mode(0o755)).unwrap();
    // An ordinary user's copy goes to maildrop/, root's straight to queue/: either way the
    // daemon takes it up within seconds, not at its next look at an idle spool.
    for (n, uid) in [(1, Some(MALLORY)), (2, None)] {
        let mut cmd = Command::new(common::sendmail_bin());
        cmd.args(["--config", shim_config.to_str().unwrap(), "-i", "r@x"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(uid) = uid {
            cmd.uid(uid).gid(uid);
        }
        let mut child = cmd.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("Subject: dropped off {n}\n\nx\n").as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let dropped = std::time::Instant::now();
        let got = bridge.wait_for(n, SOON);
        assert!(
            got[n - 1].reply.contains(&format!("dropped off {n}")),
            "{got:?}"
        );
        assert!(
            dropped.elapsed() < Duration::from_secs(10),
            "{uid:?}: picked up after {:?}: the mark was not seen",
            dropped.elapsed()
        );
    }
}

/// `mailq` and `sendmail -q` by an ordinary user, who may not read the spool: the running
/// daemon answers for it over `public/showq`, as Postfix's showq and flush services do.
#[test]
fn an_ordinary_user_lists_and_flushes_the_queue_through_the_daemon() {
    if !common::require_root() {
        return;
    }
    let (bridge, d) = common::daemon::setup("a-showq", "");
    let socket = d.dir().join("spool").join(smtp_bridge::showq::SOCKET);
    assert!(common::wait_until(SOON, || socket.exists()));
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o666
    );
    bridge.set_behaviour(Behaviour::Down);
    let mut c = d.client().unwrap();
    assert_eq!(c.message(&simple("waiting", "x")).unwrap().0, 250);
    d.wait_log("status=deferred", SOON);
    let config = d.dir().join("smtp_bridge.conf");
    let as_mallory = |args: &[&str]| {
        Command::new(common::sendmail_bin())
            .arg("--config")
            .arg(&config)
            .args(args)
            .uid(MALLORY)
            .gid(MALLORY)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let listing = as_mallory(&["-bp"]);
    let text = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.status.success(), "{listing:?}");
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        text.contains("<a@example.org>") && text.contains("(connection refused"),
        "{text}"
    );
    // The next retry is 10 s away; asking for a queue run delivers at once.
    bridge.set_behaviour(Behaviour::Accept);
    // Back up once binding its port fails again.
    assert!(common::wait_until(SOON, || std::net::TcpListener::bind(
        bridge.addr
    )
    .is_err()));
    let asked = std::time::Instant::now();
    let flush = as_mallory(&["-q"]);
    assert!(flush.status.success(), "{flush:?}");
    assert_eq!(flush.stdout, b"", "silent without -v or a terminal");
    bridge.wait_for(1, SOON);
    assert!(
        asked.elapsed() < Duration::from_secs(8),
        "delivered after {:?}: the flush did not run the queue",
        asked.elapsed()
    );
    let listing = as_mallory(&["-bp"]);
    assert_eq!(
        String::from_utf8_lossy(&listing.stdout),
        "Mail queue is empty\n"
    );

    // A client that sends its request a byte at a time, slower than anyone would, holds the
    // socket for at most its one-second deadline, not until it is done trickling.
    let trickler = {
        let socket = socket.clone();
        std::thread::spawn(move || {
            let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
            for _ in 0..30 {
                if s.write_all(b" ").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let started = std::time::Instant::now();
    let listing = as_mallory(&["-bp"]);
    assert!(listing.status.success(), "{listing:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "mailq waited {:?} behind a trickling client",
        started.elapsed()
    );
    trickler.join().unwrap();
}

// ---- the config file ------------------------------------------------------------------

#[test]
fn writable_config_is_refused_by_both_binaries_with_exit_78() {
    if !common::require_root() {
        return;
    }
    let dir = TestDir::new("a-config");
    let bridge = StandInBridge::start();
    let port = common::free_port();
    let config = common::write_config(
        &dir.path,
        &bridge.url,
        &format!("listen = [\"127.0.0.1:{port}\"]"),
    );
    for (mode, why) in [
        (0o666, "writable by everyone"),
        (0o646, "writable by everyone"),
        (0o664, "writable by its group"),
    ] {
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(mode)).unwrap();
        let daemon = Command::new(common::daemon_bin())
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        let shim = {
            let mut child = Command::new(common::sendmail_bin())
                .args(["-i", "root"])
                .env("SMTP_BRIDGE_CONFIG", &config)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            // It refuses before reading its input: a closed pipe is fine here.
            let _ = child.stdin.take().unwrap().write_all(b"Subject: s\n\nx\n");
            child.wait_with_output().unwrap()
        };
        for (who, out) in [("smtp_bridge", &daemon), ("sendmail", &shim)] {
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(78), "{who} {mode:o}: {err}");
            assert_eq!(err.lines().count(), 1, "{who}: one line: {err}");
            assert!(
                err.starts_with(&format!("{who}: refusing {}", config.display()))
                    && err.contains(why)
                    && err.contains("chmod go-w"),
                "{who} {mode:o}: {err}"
            );
        }
        // Nothing was started, spooled or sent.
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
        assert!(!dir.join("spool").exists());
    }
    assert_eq!(bridge.requests(), 0);
}

// ---- no body in the logs --------------------------------------------------------------

/// Whether `text` shows any of the body markers (plain, or as its base64 encoding shows
/// in a raw message).
fn leaks(text: &str, markers: &[&str]) -> Option<String> {
    markers
        .iter()
        .find(|m| text.contains(*m))
        .map(|m| m.to_string())
}

fn run_shim_logged(config: &Path, syslog: &Syslog, input: &[u8]) -> String {
    let mut cmd = syslog.wrap(&common::sendmail_bin());
    cmd.args(["-i", "root"])
        .env("SMTP_BRIDGE_CONFIG", config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn no_message_body_in_the_logs_at_any_level() {
    if !common::require_root() {
        return;
    }
    const PLAIN: &str = "BODYMARK-PLAIN-7f3a";
    const DECODED: &str = "BODYMARK-B64-91c2";
    // base64 of "BODYMARK-B64-91c2 secret words\n"
    let b64 = "Qk9EWU1BUkstQjY0LTkxYzIgc2VjcmV0IHdvcmRzCg==";
    const BIG: &str = "BODYMARK-BIG-55d0";
    let markers = [PLAIN, DECODED, b64, BIG];
    let plain = simple(
        "log test plain",
        &format!("{PLAIN} first line\r\n{PLAIN}\r\nsecond {PLAIN} line"),
    );
    let encoded = format!(
        "From: a@example.org\r\nTo: root\r\nSubject: log test b64\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n{b64}"
    );
    let big = simple(
        "log test big",
        &format!("{BIG} {}\r\n", "z".repeat(70)).repeat(200),
    );
    for level in ["error", "warning", "info", "debug"] {
        let dir = TestDir::new(&format!("a-nobody-{level}"));
        let bridge = StandInBridge::start();
        let syslog = Syslog::start(&dir.path);
        let port = common::free_port();
        // A small size limit, so that the big message takes the 552 path.
        let config = common::write_config(
            &dir.path,
            &bridge.url,
            &format!(
                "listen = [\"127.0.0.1:{port}\"]\nmax_message_size = 8000\nsendmail_timeout = 2\nbridge_timeout = 2"
            ),
        );
        let mut d = Daemon::try_start_at(&config, port, Some(&syslog), level, |_| {})
            .unwrap_or_else(|e| panic!("{}", e.stderr));
        let mut c = d.client().unwrap();
        assert_eq!(c.message(&plain).unwrap().0, 250);
        assert_eq!(c.message(&encoded).unwrap().0, 250);
        assert_eq!(c.message(&big).unwrap().0, 552);
        bridge.wait_for(2, SOON);
        // The failure paths: a bridge that refuses (deferred), and the shim, which sends
        // directly, then spools when the bridge fails.
        bridge.set_behaviour(Behaviour::Status(500));
        assert_eq!(c.message(&plain).unwrap().0, 250);
        // Accepted twice, then the failed attempt.
        assert!(common::wait_until(SOON, || bridge.requests() >= 3));
        let mut shim_err = run_shim_logged(&config, &syslog, plain.as_bytes());
        bridge.set_behaviour(Behaviour::Accept);
        shim_err += &run_shim_logged(&config, &syslog, encoded.as_bytes());
        let _ = c.cmd("QUIT");
        d.stop();
        let logged: Vec<String> = syslog.lines().into_iter().map(|(_, l)| l).collect();
        assert!(!logged.is_empty() || level != "debug", "nothing logged");
        for (what, text) in [
            ("syslog", logged.join("\n")),
            ("daemon stderr", d.log_text()),
            ("sendmail stderr", shim_err),
        ] {
            if let Some(m) = leaks(&text, &markers) {
                panic!("{level}: {what} shows the body marker {m}:\n{text}");
            }
        }
        eprintln!(
            "loglevel {level}: {} syslog lines, {} stderr lines, no body marker",
            logged.len(),
            d.log_lines().len()
        );
    }
}

/// 400 messages from 20 clients at once, logged at info level into a syslog that takes 0.5 ms
/// per line, so its queue is full most of the time: every message still has its `from=` line
/// and then its `status=sent` line (the daemon's writer thread waits for a busy syslog; sent
/// from the thread that logs, without waiting, many were lost), and the lines logged at the
/// stop are there too.
#[test]
fn a_burst_into_a_slow_syslog_loses_no_line() {
    if !common::require_root() {
        return;
    }
    const CLIENTS: usize = 20;
    const EACH: usize = 20;
    let dir = TestDir::new("a-log-burst");
    let bridge = StandInBridge::start();
    let syslog = Syslog::start_slow(&dir.path, Duration::from_micros(500));
    let port = common::free_port();
    let config = common::write_config(
        &dir.path,
        &bridge.url,
        &format!("listen = [\"127.0.0.1:{port}\"]"),
    );
    let mut d = Daemon::try_start_at(&config, port, Some(&syslog), "info", |_| {})
        .unwrap_or_else(|e| panic!("{}", e.stderr));
    std::thread::scope(|s| {
        for t in 0..CLIENTS {
            let d = &d;
            s.spawn(move || {
                let mut c = d.client().unwrap();
                for i in 0..EACH {
                    let reply = c.message(&simple(&format!("burst {t}.{i}"), "x")).unwrap();
                    assert_eq!(reply.0, 250, "{reply:?}");
                }
                let _ = c.cmd("QUIT");
            });
        }
    });
    let total = CLIENTS * EACH;
    bridge.wait_for(total, Duration::from_secs(60));
    assert!(d.stop().success());
    // The daemon sent its last lines before it exited; the stand-in reads them at its pace.
    common::wait_until(SOON, || {
        syslog
            .lines()
            .last()
            .is_some_and(|(_, l)| l.contains("stopped"))
    });
    let lines: Vec<String> = syslog.lines().into_iter().map(|(_, l)| l).collect();
    let text = || lines.join("\n");
    let mut first_seen = std::collections::HashMap::new();
    let (mut accepted, mut sent) = (0, 0);
    for (n, line) in lines.iter().enumerate() {
        let Some((_, message)) = line.split_once("]: ") else {
            continue;
        };
        let Some((id, rest)) = message.split_once(": ") else {
            continue;
        };
        if rest.contains("from=<") {
            accepted += 1;
            assert!(first_seen.insert(id.to_owned(), n).is_none(), "{id} twice");
        } else if rest.contains("status=sent") {
            sent += 1;
            assert!(
                first_seen.contains_key(id),
                "{id} sent before its from= line:\n{}",
                text()
            );
        }
    }
    assert_eq!((accepted, sent), (total, total), "{}", text());
    assert!(!text().contains("log lines lost"), "{}", text());
    assert!(
        lines.last().is_some_and(|l| l.contains("stopped")),
        "the last line, from the stop, is missing: {:?}",
        lines.last()
    );
}
