//! Least privilege, read back from `/proc`: started as root and bound to port 25, the daemon
//! runs as nobody with no supplementary groups and no_new_privs in every thread; started the
//! systemd way with an inherited listening socket, it serves SMTP without ever being root.
//! The root test fails under CI (`CI=true`) when not run as root.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{StandInBridge, TestDir};
use lettre::message::Message;
use lettre::{SmtpTransport, Transport};
use nix::unistd::{Group, User};

const SOON: Duration = Duration::from_secs(20);

/// Kills the daemon on drop, so a failed assertion leaves nothing behind.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nobody() -> (u32, u32) {
    let user = User::from_name("nobody").unwrap().expect("nobody exists");
    let gid = Group::from_name("nogroup")
        .unwrap()
        .map_or(user.gid, |g| g.gid);
    (user.uid.as_raw(), gid.as_raw())
}

fn field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name}: in {status}"))
        .trim()
}

/// The status file of every thread of `pid`.
fn thread_statuses(pid: u32) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = entry.unwrap().path().join("status");
        out.push(std::fs::read_to_string(path).unwrap());
    }
    out
}

fn send(port: u16, subject: &str) {
    let msg = Message::builder()
        .from("root@localhost".parse().unwrap())
        .to("root@localhost".parse().unwrap())
        .subject(subject)
        .body("privilege test".to_owned())
        .unwrap();
    let transport = SmtpTransport::builder_dangerous("127.0.0.1")
        .port(port)
        .timeout(Some(SOON))
        .build();
    let resp = transport.send(&msg).expect("send");
    assert!(resp.message().any(|l| l.contains("queued as")));
}

fn wait_port(port: u16, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + SOON;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "daemon exited with {status}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "daemon never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn root_daemon_on_port_25_runs_as_nobody_without_groups_and_with_no_new_privs() {
    if !common::require_root() {
        return;
    }
    let bridge = StandInBridge::start();
    let dir = TestDir::new("priv25");
    let config = common::write_config(&dir.path, &bridge.url, "listen = [\"127.0.0.1:25\"]");
    let log = dir.join("daemon.log");
    let child = Command::new(common::daemon_bin())
        .arg("--config")
        .arg(&config)
        .args(["--loglevel", "debug"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut daemon = Running(child);
    wait_port(25, &mut daemon.0, &log);
    // It serves, and its spool works for the unprivileged user.
    send(25, "as nobody");
    let got = bridge.wait_for(1, SOON);
    assert!(got[0].reply.contains("as nobody"), "{}", got[0].reply);

    let (uid, gid) = nobody();
    let statuses = thread_statuses(daemon.0.id());
    assert!(statuses.len() >= 2, "expected the loop plus worker threads");
    for status in &statuses {
        let name = field(status, "Name");
        let uids: Vec<&str> = field(status, "Uid").split_whitespace().collect();
        let gids: Vec<&str> = field(status, "Gid").split_whitespace().collect();
        assert_eq!(uids, vec![uid.to_string(); 4], "thread {name}: Uid");
        assert_eq!(gids, vec![gid.to_string(); 4], "thread {name}: Gid");
        assert_eq!(field(status, "Groups"), "", "thread {name}: Groups");
        assert_eq!(
            field(status, "NoNewPrivs"),
            "1",
            "thread {name}: NoNewPrivs"
        );
        assert_eq!(
            field(status, "CapEff"),
            "0000000000000000",
            "thread {name}: CapEff"
        );
    }
    let spool_owner = std::os::unix::fs::MetadataExt::uid(
        &std::fs::metadata(dir.join("spool").join("queue")).unwrap(),
    );
    assert_eq!(spool_owner, uid, "queue/ must belong to the daemon's user");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("dropped privileges to user=nobody"), "{text}");
}

#[test]
fn socket_activation_serves_smtp_without_root() {
    let bridge = StandInBridge::start();
    let dir = TestDir::new("activation");
    let root = nix::unistd::geteuid().is_root();
    let (uid, gid) = if root {
        nobody()
    } else {
        (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        )
    };
    // The spool must be usable by whoever the daemon is; it never becomes root to fix it.
    let spool = dir.join("spool");
    std::fs::create_dir(&spool).unwrap();
    if root {
        nix::unistd::chown(
            &spool,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
        .unwrap();
    }
    // What systemd does: bind, then hand the socket over as fd 3 with LISTEN_FDS=1 and
    // LISTEN_PID set to the daemon's own pid (the shell's, which exec keeps). The
    // configured address needs root to bind, so serving proves the inherited socket is used.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = common::write_config(&dir.path, &bridge.url, "listen = [\"127.0.0.1:1\"]");
    let log = dir.join("daemon.log");
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ exec \"$0\" \"$@\"")
        .arg(common::daemon_bin())
        .arg("--config")
        .arg(&config)
        .args(["--loglevel", "debug"])
        .env("LISTEN_FDS", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    // SAFETY: between fork and exec only async-signal-safe system calls run here (dup2,
    // fcntl, setgroups, setgid, setuid), with no allocation.
    unsafe {
        cmd.pre_exec(move || {
            let listener = std::os::fd::BorrowedFd::borrow_raw(fd);
            if fd == 3 {
                nix::fcntl::fcntl(
                    listener,
                    nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
                )?;
            } else {
                // dup2 clears close-on-exec on the new descriptor.
                std::mem::forget(nix::unistd::dup2_raw(listener, 3)?);
            }
            if root {
                nix::unistd::setgroups(&[])?;
                nix::unistd::setgid(nix::unistd::Gid::from_raw(gid))?;
                nix::unistd::setuid(nix::unistd::Uid::from_raw(uid))?;
            }
            Ok(())
        });
    }
    let mut daemon = Running(cmd.spawn().unwrap());
    drop(listener);
    wait_port(port, &mut daemon.0, &log);
    send(port, "socket activated");
    let got = bridge.wait_for(1, SOON);
    assert!(
        got[0].reply.contains("socket activated"),
        "{}",
        got[0].reply
    );
    for status in thread_statuses(daemon.0.id()) {
        let uids: Vec<&str> = field(&status, "Uid").split_whitespace().collect();
        assert!(uids.iter().all(|u| *u != "0"), "ran as root: {uids:?}");
        assert_eq!(uids, vec![uid.to_string(); 4]);
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("from systemd"), "{text}");
}

#[test]
fn unknown_user_is_a_privilege_failure_exit_77_before_serving() {
    if !common::require_root() {
        return;
    }
    let bridge = StandInBridge::start();
    let dir = TestDir::new("nouser");
    let port = common::free_port();
    let config = common::write_config(
        &dir.path,
        &bridge.url,
        &format!("listen = [\"127.0.0.1:{port}\"]\nusername = \"no-such-user-smtp-bridge\""),
    );
    let out = Command::new(common::daemon_bin())
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(77), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-such-user-smtp-bridge"),
        "{out:?}"
    );
}

#[test]
fn root_group_is_a_privilege_failure_exit_77_before_serving() {
    if !common::require_root() {
        return;
    }
    let bridge = StandInBridge::start();
    let dir = TestDir::new("rootgroup");
    let port = common::free_port();
    let config = common::write_config(
        &dir.path,
        &bridge.url,
        &format!("listen = [\"127.0.0.1:{port}\"]\nusername = \"nobody\"\ngroup = \"root\""),
    );
    let out = Command::new(common::daemon_bin())
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(77), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("gid 0"), "{out:?}");
    // Refused before serving: nothing ever listened on the port.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn a_changed_user_takes_over_the_queued_mail() {
    if !common::require_root() {
        return;
    }
    use common::daemon::{queued, setup, simple, Daemon};
    use std::os::unix::fs::MetadataExt;
    // Mail queued while the bridge is down, under a spool that another user held before
    // (as after `username` was changed in the configuration): the daemon, started as root,
    // gives the queued files, locks and markers to its user, and delivers.
    let (bridge, mut d) = setup("owner_change", "");
    bridge.set_behaviour(common::Behaviour::Down);
    queued(
        &d.greeted()
            .message(simple("queued under the old owner", "x")),
    );
    d.stop();
    let spool = d.dir().join("spool");
    let (old_uid, old_gid) = (4242, 4242);
    let mut files = Vec::new();
    for dir in [spool.clone(), spool.join("queue")] {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                files.push(entry.path());
            }
        }
    }
    assert!(
        files
            .iter()
            .any(|f| f.parent() == Some(&spool.join("queue"))),
        "nothing queued: {files:?}"
    );
    for f in files.iter().chain(&[
        spool.clone(),
        spool.join("queue"),
        spool.join("failed"),
        spool.join("maildrop"),
    ]) {
        std::os::unix::fs::lchown(f, Some(old_uid), Some(old_gid)).unwrap();
    }
    // A local user's maildrop file set aside into failed/ keeps its owner: it says who
    // sent it.
    let theirs = spool.join("failed").join("from-a-user");
    std::fs::write(&theirs, "set aside").unwrap();
    std::os::unix::fs::lchown(&theirs, Some(4343), Some(4343)).unwrap();
    // A file with a second name outside the spool is never given away.
    let outside = d.dir().join("outside");
    std::fs::write(&outside, "not the spool's").unwrap();
    std::os::unix::fs::lchown(&outside, Some(old_uid), Some(old_gid)).unwrap();
    std::fs::hard_link(&outside, spool.join("queue").join("planted")).unwrap();

    bridge.set_behaviour(common::Behaviour::Accept);
    let d2 = Daemon::start(&d.config, d.port);
    let got = bridge.wait_for(1, SOON);
    assert!(got[0].reply.contains("queued under the old owner"));
    let (uid, gid) = nobody();
    for f in files.iter().filter(|f| f.exists()) {
        let meta = std::fs::symlink_metadata(f).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (uid, gid), "{}", f.display());
    }
    assert_eq!(std::fs::metadata(&outside).unwrap().uid(), old_uid);
    assert_eq!(std::fs::metadata(&theirs).unwrap().uid(), 4343);
    let log = d2.log_text();
    assert!(log.contains("spool file(s)"), "{log}");
    assert!(log.contains("it has another link"), "{log}");
}
