//! How smtp_bridge is shipped, tested for real: `install.sh` into a DESTDIR (files, modes,
//! links, idempotence, exact uninstall), the scripts under shellcheck, the systemd units
//! under `systemd-analyze`, the daemon started the way systemd starts it (a listening
//! socket passed as `LISTEN_FDS`, never root), and, only where
//! `SMTP_BRIDGE_SYSTEM_TESTS=1` allows changing the machine, a real installation that
//! takes mail from `mail` and cron-style `sendmail` calls and a real `.deb` installed with
//! apt and purged.

mod common;

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use common::{StandInBridge, TestDir};

/// The environment variable that allows tests to install into the real system.
const SYSTEM_TESTS: &str = "SMTP_BRIDGE_SYSTEM_TESTS";

/// System tests change the same paths (/usr/sbin/sendmail, /etc/smtp_bridge.conf, the
/// spool): one at a time.
static SYSTEM: Mutex<()> = Mutex::new(());

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The directory holding the binaries this test run built (`smtp_bridge` and `sendmail`).
fn bin_dir() -> PathBuf {
    common::daemon_bin()
        .parent()
        .expect("binary directory")
        .to_path_buf()
}

fn show(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs install.sh with `args`, DESTDIR (empty: none) and PREFIX.
fn install_sh(destdir: Option<&Path>, prefix: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(repo().join("install.sh"));
    cmd.args(args)
        .env("PREFIX", prefix)
        .env_remove("DESTDIR")
        .env_remove(smtp_bridge::config::ENV_VAR)
        .stdin(Stdio::null());
    if let Some(d) = destdir {
        cmd.env("DESTDIR", d);
    }
    cmd.output().expect("run install.sh")
}

fn install_ok(destdir: Option<&Path>, prefix: &str, args: &[&str]) -> String {
    let out = install_sh(destdir, prefix, args);
    assert!(out.status.success(), "install.sh {args:?}:\n{}", show(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One line per path under `root` (recursively, or only its entries when `deep` is false):
/// type, mode, owner, link target or content hash. Two equal maps mean nothing changed.
fn tree(root: &Path, deep: bool) -> BTreeMap<PathBuf, String> {
    fn walk(path: &Path, deep: bool, top: bool, out: &mut BTreeMap<PathBuf, String>) {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return;
        };
        let kind = meta.file_type();
        let what = if kind.is_symlink() {
            format!(
                "link -> {}",
                std::fs::read_link(path).unwrap_or_default().display()
            )
        } else if kind.is_file() {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            std::fs::read(path).unwrap_or_default().hash(&mut h);
            format!("file {} {:x}", meta.len(), h.finish())
        } else if kind.is_dir() {
            "dir".to_owned()
        } else {
            "other".to_owned()
        };
        out.insert(
            path.to_path_buf(),
            format!(
                "{what} mode {:o} owner {}:{}",
                meta.mode() & 0o7777,
                meta.uid(),
                meta.gid()
            ),
        );
        if kind.is_dir() && (deep || top) {
            if let Ok(entries) = std::fs::read_dir(path) {
                for entry in entries.flatten() {
                    walk(&entry.path(), deep, false, out);
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, deep, true, &mut out);
    out
}

fn diff(before: &BTreeMap<PathBuf, String>, after: &BTreeMap<PathBuf, String>) -> String {
    let mut lines = Vec::new();
    for (path, was) in before {
        match after.get(path) {
            None => lines.push(format!("- {} ({was})", path.display())),
            Some(now) if now != was => lines.push(format!("~ {}: {was} => {now}", path.display())),
            _ => {}
        }
    }
    for (path, now) in after {
        if !before.contains_key(path) {
            lines.push(format!("+ {} ({now})", path.display()));
        }
    }
    lines.join("\n")
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .mode()
        & 0o7777
}

fn link(path: &Path) -> PathBuf {
    std::fs::read_link(path).unwrap_or_else(|e| panic!("{} is not a link: {e}", path.display()))
}

#[test]
fn help_lists_every_option_and_unknown_options_fail() {
    let out = install_sh(None, "/usr/local", &["--help"]);
    assert!(out.status.success(), "{}", show(&out));
    let help = String::from_utf8_lossy(&out.stdout);
    for option in [
        "--replace-sendmail",
        "--uninstall",
        "--no-start",
        "--binaries",
        "--gzip-man",
        "PREFIX",
        "DESTDIR",
    ] {
        assert!(
            help.contains(option),
            "{option} missing from --help:\n{help}"
        );
    }
    let out = install_sh(None, "/usr/local", &["--frobnicate"]);
    assert!(!out.status.success(), "an unknown option must fail");
}

#[test]
fn destdir_install_has_every_file_mode_and_link_then_uninstall_restores_it() {
    let dest = TestDir::new("destdir");
    let root = dest.join("root");
    // Something already at /usr/sbin/sendmail: --replace-sendmail must keep it aside.
    std::fs::create_dir_all(root.join("usr/sbin")).unwrap();
    std::fs::write(root.join("usr/sbin/sendmail"), "#!/bin/sh\n# the old MTA\n").unwrap();
    std::fs::set_permissions(
        root.join("usr/sbin/sendmail"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let before = tree(&root, true);

    let bins = bin_dir();
    let args = [
        "--replace-sendmail",
        "--binaries",
        bins.to_str().unwrap(),
        "--no-start",
    ];
    let stdout = install_ok(Some(&root), "/usr", &args);
    let at = |p: &str| root.join(p.trim_start_matches('/'));

    // Binaries, pages, example, configuration.
    for (path, want) in [
        ("/usr/sbin/smtp_bridge", 0o755),
        ("/usr/sbin/smtp_bridge-sendmail", 0o755),
        ("/usr/share/man/man8/smtp_bridge.8", 0o644),
        ("/usr/share/man/man8/sendmail.8", 0o644),
        ("/usr/share/man/man5/smtp_bridge.conf.5", 0o644),
        ("/usr/share/doc/smtp_bridge/smtp_bridge.conf.example", 0o644),
        ("/etc/smtp_bridge.conf", 0o644),
        ("/etc/systemd/system/smtp_bridge.service", 0o644),
        ("/etc/systemd/system/smtp_bridge.socket", 0o644),
    ] {
        assert!(at(path).is_file(), "{path} not installed");
        assert_eq!(mode(&at(path)), want, "mode of {path}");
    }
    assert_eq!(
        std::fs::read(at("/usr/sbin/smtp_bridge")).unwrap(),
        std::fs::read(common::daemon_bin()).unwrap(),
        "the daemon installed is not the one built"
    );
    // A new /etc/smtp_bridge.conf is the example, with the daemon's own user instead of
    // nobody (two lines changed, nothing else).
    let example = std::fs::read_to_string(repo().join("smtp_bridge.conf.example")).unwrap();
    let conf = std::fs::read_to_string(at("/etc/smtp_bridge.conf")).unwrap();
    let changed: Vec<(&str, &str)> = example
        .lines()
        .zip(conf.lines())
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(
        changed,
        [
            ("#username = \"nobody\"", "username = \"smtp_bridge\""),
            ("#group = \"nogroup\"", "group = \"smtp_bridge\""),
        ],
        "a new /etc/smtp_bridge.conf is the example with the daemon's own user"
    );
    assert_eq!(example.lines().count(), conf.lines().count());
    // The units point at this PREFIX and this configuration's user and spool.
    let service = std::fs::read_to_string(at("/etc/systemd/system/smtp_bridge.service")).unwrap();
    for line in [
        "ExecStart=/usr/sbin/smtp_bridge --config /etc/smtp_bridge.conf",
        "User=smtp_bridge",
        "Group=smtp_bridge",
        "ReadWritePaths=/var/spool/smtp_bridge",
    ] {
        assert!(
            service.lines().any(|l| l == line),
            "{line} missing:\n{service}"
        );
    }

    // The spool: maildrop sticky and writable by all, the rest private.
    for (dir, want) in [
        ("/var/spool/smtp_bridge", 0o755),
        ("/var/spool/smtp_bridge/maildrop", 0o1733),
        ("/var/spool/smtp_bridge/queue", 0o700),
        ("/var/spool/smtp_bridge/failed", 0o700),
    ] {
        assert!(at(dir).is_dir(), "{dir} missing");
        assert_eq!(mode(&at(dir)), want, "mode of {dir}");
    }
    // Under DESTDIR the owners and the service manager are not touched, only recorded.
    let pending =
        std::fs::read_to_string(at("/var/lib/smtp_bridge/pending-actions")).unwrap_or_default();
    assert!(
        pending.lines().any(|l| l.starts_with("useradd --system")
            && l.contains("--shell /usr/sbin/nologin")
            && l.contains(" smtp_bridge")),
        "creating the system user is not recorded:\n{pending}"
    );
    for dir in ["", "/maildrop", "/queue", "/failed"] {
        let line = format!("chown smtp_bridge:smtp_bridge /var/spool/smtp_bridge{dir}");
        assert!(
            pending.lines().any(|l| l == line),
            "{line} not recorded:\n{pending}"
        );
        assert!(stdout.contains(&format!("would: {line}")), "{stdout}");
    }
    assert!(pending.contains("systemctl"), "{pending}");

    // The sendmail names are ours, the old one kept aside.
    for path in [
        "/usr/sbin/sendmail",
        "/usr/lib/sendmail",
        "/usr/bin/mailq",
        "/usr/bin/newaliases",
    ] {
        assert_eq!(
            link(&at(path)),
            Path::new("/usr/sbin/smtp_bridge-sendmail"),
            "{path}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(at("/usr/sbin/sendmail.smtp_bridge-saved")).unwrap(),
        "#!/bin/sh\n# the old MTA\n"
    );
    assert_eq!(
        link(&at("/usr/share/man/man8/mailq.8")),
        Path::new("sendmail.8")
    );

    // Twice changes nothing.
    let first = tree(&root, true);
    install_ok(Some(&root), "/usr", &args);
    let second = tree(&root, true);
    assert!(
        first == second,
        "a second run changed the tree:\n{}",
        diff(&first, &second)
    );

    // Uninstall puts everything back as it was, the old sendmail included.
    install_ok(Some(&root), "/usr", &["--uninstall"]);
    let after = tree(&root, true);
    assert!(
        before == after,
        "--uninstall did not restore the tree:\n{}",
        diff(&before, &after)
    );
}

#[test]
fn destdir_install_keeps_an_existing_config_and_gzips_pages_on_request() {
    let dest = TestDir::new("keepconf");
    let root = dest.join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    // The original's INI form, with another user and spool: install.sh must read it
    // through the daemon and use what it says.
    let mine = "[DEFAULT]\nqueue = http://127.0.0.1:9/replies\nloglevel = INFO\n\
                smtphost = 127.0.0.1\nsmtpport = 2525\nusername = daemon\ngroup = daemon\n";
    std::fs::write(root.join("etc/smtp_bridge.conf"), mine).unwrap();
    std::fs::set_permissions(
        root.join("etc/smtp_bridge.conf"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    let before = tree(&root, true);
    let bins = bin_dir();
    let stdout = install_ok(
        Some(&root),
        "/opt/sb",
        &["--binaries", bins.to_str().unwrap(), "--gzip-man"],
    );
    assert_eq!(
        std::fs::read_to_string(root.join("etc/smtp_bridge.conf")).unwrap(),
        mine,
        "install.sh overwrote an existing configuration"
    );
    assert_eq!(mode(&root.join("etc/smtp_bridge.conf")), 0o640);
    assert!(stdout.contains("chown daemon:daemon /var/spool/smtp_bridge/queue"));
    assert!(root.join("opt/sb/sbin/smtp_bridge").is_file());
    let page = root.join("opt/sb/share/man/man8/sendmail.8.gz");
    let out = Command::new("gzip")
        .arg("-dc")
        .arg(&page)
        .output()
        .expect("gzip");
    assert_eq!(
        out.stdout,
        std::fs::read(repo().join("man/sendmail.8")).unwrap()
    );
    // Without --replace-sendmail the system names are left alone.
    assert!(!root.join("usr/sbin/sendmail").exists());
    let service =
        std::fs::read_to_string(root.join("etc/systemd/system/smtp_bridge.service")).unwrap();
    assert!(service.contains("ExecStart=/opt/sb/sbin/smtp_bridge "));
    assert!(service.lines().any(|l| l == "User=daemon"));

    install_ok(Some(&root), "/opt/sb", &["--uninstall"]);
    let after = tree(&root, true);
    assert!(
        before == after,
        "--uninstall changed what it did not install:\n{}",
        diff(&before, &after)
    );
}

#[test]
fn shell_scripts_are_clean_under_shellcheck() {
    if !common::require_tool("shellcheck") {
        return;
    }
    let scripts = [
        "install.sh",
        "packaging/build-deb.sh",
        "packaging/debian/postinst",
        "packaging/debian/prerm",
        "packaging/debian/postrm",
        "packaging/sandbox-run.sh",
    ];
    let out = Command::new("shellcheck")
        .args(["--shell=sh", "--severity=style"])
        .args(scripts.iter().map(|s| repo().join(s)))
        .output()
        .expect("run shellcheck");
    assert!(out.status.success(), "shellcheck:\n{}", show(&out));
}

/// The units with ExecStart pointing at the built daemon (verify wants it to exist).
fn units_for_verify(dir: &TestDir) -> (PathBuf, PathBuf) {
    let service = std::fs::read_to_string(repo().join("packaging/smtp_bridge.service")).unwrap();
    let service = service.replace(
        "/usr/sbin/smtp_bridge",
        common::daemon_bin().to_str().unwrap(),
    );
    let s = dir.join("smtp_bridge.service");
    std::fs::write(&s, service).unwrap();
    let k = dir.join("smtp_bridge.socket");
    std::fs::copy(repo().join("packaging/smtp_bridge.socket"), &k).unwrap();
    (s, k)
}

#[test]
fn systemd_units_verify_and_the_service_is_hardened() {
    if !common::require_tool("systemd-analyze") {
        return;
    }
    let dir = TestDir::new("units");
    let (service, socket) = units_for_verify(&dir);
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&socket)
        .arg(&service)
        .output()
        .expect("run systemd-analyze verify");
    assert!(
        out.status.success(),
        "systemd-analyze verify:\n{}",
        show(&out)
    );
    // Not nobody, whom systemd calls unsafe ("Special user nobody configured").
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("not safe"),
        "systemd-analyze verify:\n{}",
        show(&out)
    );

    let text = std::fs::read_to_string(&service).unwrap();
    let deny = text.find("SystemCallFilter=~@privileged @resources");
    let allow = text.find("SystemCallFilter=setpriority");
    assert!(
        deny.is_some() && allow > deny,
        "setpriority must be allowed after the @resources deny list"
    );
    for setting in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/spool/smtp_bridge",
        "PrivateTmp=yes",
        "ProtectHome=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "CapabilityBoundingSet=",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Requires=smtp_bridge.socket",
        // After the @resources deny list, or the delivery thread's nice value stays 0.
        "SystemCallFilter=setpriority",
    ] {
        assert!(
            text.lines().any(|l| l == setting),
            "{setting} missing from smtp_bridge.service"
        );
    }
    let socket_text = std::fs::read_to_string(&socket).unwrap();
    for setting in [
        "ListenStream=127.0.0.1:25",
        "ListenStream=[::1]:25",
        "BindIPv6Only=ipv6-only",
    ] {
        assert!(socket_text.lines().any(|l| l == setting), "{setting}");
    }

    // The exposure score, as `systemd-analyze security` rates it (lower is better; 10 is
    // an unconfined root service): 1.4 on systemd 252 (1.7 when the unit ran as nobody).
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&service)
        .output()
        .expect("run systemd-analyze security");
    let report = String::from_utf8_lossy(&out.stdout);
    let score: f64 = report
        .lines()
        .find_map(|l| l.split("smtp_bridge.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{}", show(&out)));
    eprintln!("systemd-analyze security: exposure {score}");
    assert!(
        score <= 1.5,
        "exposure {score} is worse than 1.5:\n{report}"
    );
}

/// Reads one SMTP reply (all its lines) and returns it.
fn reply(reader: &mut BufReader<TcpStream>) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return all;
        }
        all.push_str(&line);
        if line.as_bytes().get(3) != Some(&b'-') {
            return all;
        }
    }
}

/// Sends one message over SMTP and returns the final reply to DATA.
fn smtp_send(port: u16, subject: &str) -> String {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the daemon");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let greeting = reply(&mut reader);
    assert!(greeting.starts_with("220"), "greeting: {greeting:?}");
    let message = format!(
        "From: <monitor@example.org>\r\nTo: <root@example.org>\r\nSubject: {subject}\r\n\r\nbody of {subject}\r\n.\r\n"
    );
    for (command, want) in [
        ("EHLO tester\r\n".to_owned(), "250"),
        ("MAIL FROM:<monitor@example.org>\r\n".to_owned(), "250"),
        ("RCPT TO:<root@example.org>\r\n".to_owned(), "250"),
        ("DATA\r\n".to_owned(), "354"),
    ] {
        writer.write_all(command.as_bytes()).unwrap();
        let got = reply(&mut reader);
        assert!(got.starts_with(want), "{command:?} answered {got:?}");
    }
    writer.write_all(message.as_bytes()).unwrap();
    let done = reply(&mut reader);
    let _ = writer.write_all(b"QUIT\r\n");
    done
}

fn status_ids(pid: u32, field: &str) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn daemon_serves_a_socket_passed_the_systemd_way_without_being_root() {
    let bridge = StandInBridge::start();
    let dir = TestDir::new("socket-activation");
    // The configured listen address is one an unprivileged process cannot bind: the daemon
    // must serve the socket it is given instead of binding.
    let config = common::write_config(
        &dir.path,
        &bridge.url,
        "listen = [\"127.0.0.1:1\"]\nallowed_clients = [\"127.0.0.0/8\"]",
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();

    // As root, run as nobody from the start (as User= does); otherwise as ourselves.
    let nobody = nix::unistd::User::from_name("nobody").ok().flatten();
    let as_root = nix::unistd::geteuid().is_root();
    let spool = dir.join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let mut cmd = Command::new("sh");
    // What systemd does: the sockets from fd 3 on, LISTEN_FDS, and LISTEN_PID naming the
    // process that will run the daemon (sh's own PID, kept by exec).
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=smtp_bridge.socket exec \"$0\" --config \"$1\"")
        .arg(common::daemon_bin())
        .arg(&config)
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if as_root {
        let nobody = nobody.expect("user nobody");
        std::os::unix::fs::chown(&spool, Some(nobody.uid.as_raw()), Some(nobody.gid.as_raw()))
            .unwrap();
        // std drops the supplementary groups too when root sets a uid.
        cmd.uid(nobody.uid.as_raw()).gid(nobody.gid.as_raw());
    }
    let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    // SAFETY: only dup2 between fork and exec, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if nix::libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("start the daemon");
    // The daemon holds the socket now; ours would keep accepting into the backlog if the
    // daemon died.
    drop(listener);
    let pid = child.id();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut stderr = child.stderr.take().unwrap();
    let mut guard = Kill(child);

    // The socket listens from the start; a refused connection means the daemon died with it.
    // Say how, with what it printed, rather than only that the connection was refused.
    if let Err(e) = TcpStream::connect(("127.0.0.1", port)) {
        let exited = guard.0.try_wait().ok().flatten();
        let _ = guard.0.kill();
        let _ = guard.0.wait();
        let mut log = String::new();
        let _ = stderr.read_to_string(&mut log);
        panic!("cannot connect to the daemon ({e}); it exited with {exited:?}:\n{log}");
    }
    let done = smtp_send(port, "socket activation");
    assert!(done.starts_with("250"), "DATA answered {done:?}");
    let got = bridge.wait_for(1, Duration::from_secs(30));
    assert!(
        got[0].reply.contains("socket activation"),
        "{:?}",
        got[0].reply
    );
    // Never root: every uid and gid of the process is the unprivileged one.
    let uids = status_ids(pid, "Uid:");
    assert!(
        !uids.is_empty() && uids.iter().all(|&u| u != 0),
        "Uid: {uids:?}"
    );
    let gids = status_ids(pid, "Gid:");
    assert!(gids.iter().all(|&g| g != 0), "Gid: {gids:?}");
    if as_root {
        assert_eq!(status_ids(pid, "Groups:"), Vec::<u32>::new());
    }
    drop(guard);
    let mut log = String::new();
    let _ = stderr.read_to_string(&mut log);
    assert!(
        !log.contains("127.0.0.1:1"),
        "the daemon tried the configured address:\n{log}"
    );
}

// ---- system tests: change the machine, so only with SMTP_BRIDGE_SYSTEM_TESTS=1 ----------

/// Whether the tests that install into the real system may run. They need root and the
/// explicit permission of `SMTP_BRIDGE_SYSTEM_TESTS=1`; under CI a missing permission is a
/// failure, not a skip.
fn system_tests_allowed() -> bool {
    if std::env::var(SYSTEM_TESTS).as_deref() != Ok("1") {
        assert!(
            !common::under_ci(),
            "{SYSTEM_TESTS}=1 must be set under CI: these tests install smtp_bridge into \
             the machine (as root) and prove the install, the mail path and the removal"
        );
        eprintln!("SKIP: set {SYSTEM_TESTS}=1 (as root, on a machine you can change)");
        return false;
    }
    common::require_root()
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}:\n{}", show(&out));
    out
}

/// The parts of the machine an installation may touch.
fn system_snapshot() -> BTreeMap<PathBuf, String> {
    let mut all = BTreeMap::new();
    for (path, deep) in [
        ("/usr/sbin", false),
        ("/usr/bin", false),
        ("/usr/lib", false),
        ("/usr/local", true),
        ("/etc", true),
        ("/var/spool", true),
        ("/var/lib/smtp_bridge", true),
        ("/lib/systemd/system", false),
        ("/run/smtp_bridge.pid", false),
    ] {
        all.extend(tree(Path::new(path), deep));
    }
    // The shadow tools' backup copies (`passwd-` holds the file as it was before the last
    // change of any user): creating the daemon's user and removing it again leaves them
    // one step behind, while the files themselves are back as they were.
    for name in ["passwd-", "group-", "shadow-", "gshadow-"] {
        all.remove(&Path::new("/etc").join(name));
    }
    all
}

/// The daemon's own system user, which a fresh install and the package create.
const DAEMON_USER: &str = "smtp_bridge";

/// Checks that `DAEMON_USER` is a system user that cannot log in, at home in the spool,
/// and returns its uid.
fn assert_daemon_user() -> u32 {
    let user = nix::unistd::User::from_name(DAEMON_USER)
        .unwrap()
        .unwrap_or_else(|| panic!("no user {DAEMON_USER}"));
    assert!(
        user.uid.as_raw() > 0 && user.uid.as_raw() < 1000,
        "{DAEMON_USER} is not a system user: uid {}",
        user.uid
    );
    assert_eq!(user.shell, Path::new("/usr/sbin/nologin"));
    assert_eq!(user.dir, Path::new("/var/spool/smtp_bridge"));
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    assert_ne!(user.uid, nobody.uid);
    assert_ne!(user.gid, nobody.gid, "{DAEMON_USER} shares nobody's group");
    user.uid.as_raw()
}

/// Checks that smtp_bridge is not installed here (no configuration, no install state, no
/// user): a system test starts from a clean machine.
fn assert_clean_machine() {
    assert!(
        !Path::new("/etc/smtp_bridge.conf").exists() && !Path::new("/var/lib/smtp_bridge").exists(),
        "the machine already has smtp_bridge installed; the system test needs a clean one"
    );
    assert_no_daemon_user("before the install");
}

/// Checks that neither the daemon's user nor its group exists.
fn assert_no_daemon_user(when: &str) {
    assert!(
        nix::unistd::User::from_name(DAEMON_USER).unwrap().is_none()
            && nix::unistd::Group::from_name(DAEMON_USER)
                .unwrap()
                .is_none(),
        "{when}: the user or group {DAEMON_USER} exists"
    );
}

/// Undoes a system install even when an assertion failed half-way, so the next test (and
/// the next CI step) starts from a clean machine.
struct SystemInstall {
    wrote_config: bool,
}

impl Drop for SystemInstall {
    fn drop(&mut self) {
        if Path::new("/var/lib/smtp_bridge/install.manifest").exists() {
            let _ = install_sh(None, "/usr/local", &["--uninstall"]);
        }
        if self.wrote_config {
            let _ = std::fs::remove_file("/etc/smtp_bridge.conf");
        }
    }
}

/// Another MTA still on port 25 (exim4 or postfix not removed yet): the quick start refuses
/// before it changes anything, and says who holds the port, instead of replacing sendmail
/// and leaving no daemon.
#[test]
fn system_install_refuses_while_another_mta_holds_port_25() {
    if !system_tests_allowed() || !common::require_tool("ss") {
        return;
    }
    let _one = SYSTEM.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        !Path::new("/var/lib/smtp_bridge").exists(),
        "the machine already has smtp_bridge installed; the system test needs a clean one"
    );
    let _guard = SystemInstall {
        wrote_config: false,
    };
    let before = system_snapshot();
    let other_mta = std::net::TcpListener::bind("127.0.0.1:25").expect("port 25 free");
    let bins = bin_dir();
    let out = install_sh(
        None,
        "/usr/local",
        &["--replace-sendmail", "--binaries", bins.to_str().unwrap()],
    );
    drop(other_mta);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        err.contains("port 25 is in use by") && err.contains("--no-start"),
        "{err}"
    );
    let after = system_snapshot();
    assert!(before == after, "changed:\n{}", diff(&before, &after));
}

#[test]
fn system_install_takes_mail_from_mail_and_cron_then_uninstall_restores_the_machine() {
    if !system_tests_allowed() || !common::require_tool("mail") {
        return;
    }
    let _one = SYSTEM.lock().unwrap_or_else(|e| e.into_inner());
    assert_clean_machine();
    let bridge = StandInBridge::start();
    let port = common::free_port();
    // Written before the install, so the install must keep it (and uninstall leave it). It
    // names the daemon's own user, as a fresh configuration does: the install creates it.
    std::fs::write(
        "/etc/smtp_bridge.conf",
        format!(
            "queue = \"{}\"\nname = \"systest\"\nhostname = \"systest\"\nloglevel = \"debug\"\n\
             listen = [\"127.0.0.1:{port}\"]\nusername = \"{DAEMON_USER}\"\ngroup = \"{DAEMON_USER}\"\n",
            bridge.url
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        "/etc/smtp_bridge.conf",
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let guard = SystemInstall { wrote_config: true };
    let before = system_snapshot();
    let started = std::time::Instant::now();
    let step = |what: &str| eprintln!("system test: {what} after {:?}", started.elapsed());

    let bins = bin_dir();
    install_ok(
        None,
        "/usr/local",
        &["--replace-sendmail", "--binaries", bins.to_str().unwrap()],
    );
    assert_eq!(
        link(Path::new("/usr/sbin/sendmail")),
        Path::new("/usr/local/sbin/smtp_bridge-sendmail")
    );
    let uid = assert_daemon_user();
    let queue = std::fs::metadata("/var/spool/smtp_bridge/queue").unwrap();
    assert_eq!(queue.uid(), uid, "queue/ owner");
    assert_eq!(queue.mode() & 0o7777, 0o700);
    assert_eq!(
        std::fs::metadata("/var/spool/smtp_bridge/maildrop")
            .unwrap()
            .mode()
            & 0o7777,
        0o1733
    );

    // The daemon install.sh started runs as its own user and takes SMTP.
    let pid: u32 = std::fs::read_to_string("/run/smtp_bridge.pid")
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .or_else(|| {
            // Under systemd the service manager holds the PID.
            let out = Command::new("systemctl")
                .args(["show", "-p", "MainPID", "--value", "smtp_bridge.service"])
                .output()
                .ok()?;
            String::from_utf8_lossy(&out.stdout).trim().parse().ok()
        })
        .expect("the daemon's PID");
    assert!(
        common::wait_until(Duration::from_secs(10), || {
            let u = status_ids(pid, "Uid:");
            !u.is_empty() && u.iter().all(|&id| id == uid)
        }),
        "the daemon does not run as {DAEMON_USER}: {:?}",
        status_ids(pid, "Uid:")
    );
    let done = smtp_send(port, "systest smtp");
    step("SMTP message accepted");

    assert!(done.starts_with("250"), "{done:?}");

    // `mail` (GNU mailutils) finds /usr/sbin/sendmail by itself.
    let mut mail = Command::new("mail")
        .args(["-s", "systest subject", "root"])
        .env_remove(smtp_bridge::config::ENV_VAR)
        .stdin(Stdio::piped())
        .spawn()
        .expect("run mail");
    mail.stdin
        .take()
        .unwrap()
        .write_all(b"systest body\n")
        .unwrap();
    assert!(mail.wait().unwrap().success(), "mail failed");
    step("mail done");

    // What Debian's cron runs.
    let mut cron = Command::new("/usr/sbin/sendmail")
        .args(["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"])
        .env_remove(smtp_bridge::config::ENV_VAR)
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sendmail");
    cron.stdin
        .take()
        .unwrap()
        .write_all(
            b"From: root (Cron Daemon)\nTo: root\nSubject: Cron <root@systest> run-parts /etc/cron.daily\n\
              MIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\n\nlogrotate: ok\n",
        )
        .unwrap();
    let out = cron.wait_with_output().unwrap();
    assert!(out.status.success(), "cron-style sendmail:\n{}", show(&out));
    assert!(
        out.stdout.is_empty() && out.stderr.is_empty(),
        "sendmail must be silent on success:\n{}",
        show(&out)
    );

    let got = bridge.wait_for(3, Duration::from_secs(60));
    step("three digests arrived");
    for needle in [
        "systest smtp",
        "systest subject",
        "Cron <root@systest> run-parts",
    ] {
        assert!(
            got.iter().any(|r| r.reply.contains(needle)),
            "no digest with {needle:?}: {got:#?}"
        );
    }
    // Nothing waits any more, and newaliases is a silent success.
    assert!(common::wait_until(Duration::from_secs(30), || {
        Command::new("/usr/bin/mailq")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("Mail queue is empty"))
            .unwrap_or(false)
    }));
    let out = run(&mut Command::new("/usr/bin/newaliases"));
    step("queue empty");
    assert!(out.stdout.is_empty() && out.stderr.is_empty());

    install_ok(None, "/usr/local", &["--uninstall"]);
    step("uninstalled");
    assert!(
        common::wait_until(Duration::from_secs(30), || !Path::new(&format!(
            "/proc/{pid}"
        ))
        .exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true)),
        "the daemon still runs after --uninstall"
    );
    assert_no_daemon_user("after --uninstall");
    let after = system_snapshot();
    assert!(
        before == after,
        "--uninstall did not restore the machine:\n{}",
        diff(&before, &after)
    );
    drop(guard);
}

/// A group named like the daemon's user that was there before: the install uses it, and
/// the uninstall removes the user it created but not that group (userdel alone would).
#[test]
fn system_install_uses_an_existing_group_and_leaves_it() {
    if !system_tests_allowed() {
        return;
    }
    let _one = SYSTEM.lock().unwrap_or_else(|e| e.into_inner());
    assert_clean_machine();
    struct Group;
    impl Drop for Group {
        fn drop(&mut self) {
            let _ = Command::new("userdel").arg(DAEMON_USER).output();
            let _ = Command::new("groupdel").arg(DAEMON_USER).output();
        }
    }
    run(Command::new("groupadd").args(["--system", DAEMON_USER]));
    let _group = Group;
    let _guard = SystemInstall {
        wrote_config: false,
    };
    let bins = bin_dir();
    install_ok(
        None,
        "/usr/local",
        &["--no-start", "--binaries", bins.to_str().unwrap()],
    );
    let user = nix::unistd::User::from_name(DAEMON_USER)
        .unwrap()
        .expect("user");
    let group = nix::unistd::Group::from_name(DAEMON_USER)
        .unwrap()
        .expect("group");
    assert_eq!(user.gid, group.gid, "the existing group is the user's");
    install_ok(None, "/usr/local", &["--uninstall"]);
    assert!(
        nix::unistd::User::from_name(DAEMON_USER).unwrap().is_none(),
        "the user we created is still there"
    );
    let after = nix::unistd::Group::from_name(DAEMON_USER).unwrap();
    assert_eq!(
        after.map(|g| g.gid),
        Some(group.gid),
        "the group that was there before is gone"
    );
}

/// Purges the package even when an assertion failed half-way.
struct DebInstalled;

impl Drop for DebInstalled {
    fn drop(&mut self) {
        let _ = Command::new("apt-get")
            .args(["purge", "-y", "-q", "smtp-bridge"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output();
    }
}

fn package_installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", name])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

#[test]
fn deb_builds_installs_with_apt_provides_the_mta_and_purges_cleanly() {
    if !system_tests_allowed()
        || !common::require_tool("dpkg-deb")
        || !common::require_tool("apt-get")
    {
        return;
    }
    let _one = SYSTEM.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        !package_installed("smtp-bridge") && !Path::new("/etc/smtp_bridge.conf").exists(),
        "the machine already has smtp_bridge; the package test needs a clean one"
    );
    assert_no_daemon_user("before the package");
    let out_dir = TestDir::new("deb");
    let bins = bin_dir();
    let out = run(Command::new(repo().join("packaging/build-deb.sh"))
        .arg("--binaries")
        .arg(&bins)
        .arg("--out")
        .arg(&out_dir.path));
    let deb = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    assert!(deb.is_file(), "no .deb at {}", deb.display());
    let info = run(Command::new("dpkg-deb").args(["-f"]).arg(&deb).args([
        "Package",
        "Provides",
        "Conflicts",
        "Replaces",
    ]));
    let info = String::from_utf8_lossy(&info.stdout);
    for field in [
        "Package: smtp-bridge",
        "Provides: mail-transport-agent",
        "Conflicts: mail-transport-agent",
        "Replaces: mail-transport-agent",
    ] {
        assert!(info.contains(field), "{field} missing:\n{info}");
    }

    let before = system_snapshot();
    let _purge = DebInstalled;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q"])
        .arg(&deb)
        .env("DEBIAN_FRONTEND", "noninteractive"));
    assert!(package_installed("smtp-bridge"));
    for path in [
        "/usr/sbin/sendmail",
        "/usr/lib/sendmail",
        "/usr/bin/mailq",
        "/usr/bin/newaliases",
    ] {
        // Relative links inside the package (lintian), to the one binary.
        assert!(link(Path::new(path)).is_relative(), "{path}");
        assert_eq!(
            std::fs::canonicalize(path).unwrap(),
            Path::new("/usr/sbin/smtp_bridge-sendmail"),
            "{path}"
        );
    }
    for unit in ["smtp_bridge.service", "smtp_bridge.socket"] {
        assert!(
            Path::new("/lib/systemd/system").join(unit).is_file(),
            "{unit}"
        );
    }
    let conffiles = run(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "smtp-bridge"]));
    assert!(String::from_utf8_lossy(&conffiles.stdout).contains("/etc/smtp_bridge.conf"));
    // The shipped configuration names the daemon's own user, which postinst created.
    let uid = assert_daemon_user();
    for (dir, want) in [("maildrop", 0o1733), ("queue", 0o700), ("failed", 0o700)] {
        let meta = std::fs::metadata(Path::new("/var/spool/smtp_bridge").join(dir)).unwrap();
        assert_eq!(meta.mode() & 0o7777, want, "{dir}");
        assert_eq!(meta.uid(), uid, "{dir} owner");
    }
    // A configuration naming another user (an older one kept on upgrade) gets a drop-in that
    // runs the daemon as that user, so that the unit and the spool agree; back to the
    // shipped one, the drop-in goes.
    let dropin = Path::new("/etc/systemd/system/smtp_bridge.service.d/50-configuration.conf");
    assert!(!dropin.exists(), "a drop-in for the shipped configuration");
    let shipped = std::fs::read_to_string("/etc/smtp_bridge.conf").unwrap();
    let old = shipped
        .replace("username = \"smtp_bridge\"", "#username = \"nobody\"")
        .replace("group = \"smtp_bridge\"", "#group = \"nogroup\"");
    assert_ne!(old, shipped);
    std::fs::write("/etc/smtp_bridge.conf", &old).unwrap();
    let reconfigure = || {
        run(Command::new("dpkg-reconfigure")
            .args(["-f", "noninteractive", "smtp-bridge"])
            .env("DEBIAN_FRONTEND", "noninteractive"));
    };
    reconfigure();
    let text = std::fs::read_to_string(dropin).expect("the drop-in for user nobody");
    for line in [
        "User=nobody",
        "Group=nogroup",
        "ReadWritePaths=/var/spool/smtp_bridge",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let queue = std::fs::metadata("/var/spool/smtp_bridge/queue").unwrap();
    assert_eq!(
        queue.uid(),
        nobody.uid.as_raw(),
        "queue/ follows the configured user"
    );
    std::fs::write("/etc/smtp_bridge.conf", &shipped).unwrap();
    reconfigure();
    assert!(!dropin.exists() && !dropin.parent().unwrap().exists());
    let queue = std::fs::metadata("/var/spool/smtp_bridge/queue").unwrap();
    assert_eq!(queue.uid(), uid, "queue/ is the daemon's user's again");

    // With the bridge unreachable, sendmail still takes the message (into the spool).
    let mut sm = Command::new("/usr/sbin/sendmail")
        .arg("root")
        .env_remove(smtp_bridge::config::ENV_VAR)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    sm.stdin
        .take()
        .unwrap()
        .write_all(b"Subject: from the package\n\nqueued\n")
        .unwrap();
    assert!(sm.wait().unwrap().success());

    // bsd-mailx needs `default-mta | mail-transport-agent`: we satisfy it, so apt must not
    // bring in any other MTA.
    let sim = Command::new("apt-get")
        .args(["install", "-s", "--no-install-recommends", "bsd-mailx"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .unwrap();
    let sim_text = String::from_utf8_lossy(&sim.stdout);
    assert!(
        sim.status.success(),
        "apt-get -s install bsd-mailx (are the apt lists there? apt-get update):\n{}",
        show(&sim)
    );
    let installs: Vec<&str> = sim_text
        .lines()
        .filter_map(|l| l.strip_prefix("Inst "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        installs.contains(&"bsd-mailx") || package_installed("bsd-mailx"),
        "{sim_text}"
    );
    let providers = run(Command::new("apt-cache").args(["showpkg", "mail-transport-agent"]));
    let providers = String::from_utf8_lossy(&providers.stdout);
    let mtas: Vec<&str> = providers
        .lines()
        .skip_while(|l| !l.starts_with("Reverse Provides:"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .filter(|p| *p != "smtp-bridge")
        .collect();
    assert!(!mtas.is_empty(), "apt knows no MTA at all:\n{providers}");
    for pkg in &installs {
        assert!(
            !mtas.contains(pkg) && !["exim4", "postfix", "default-mta"].contains(pkg),
            "installing bsd-mailx would pull in the MTA {pkg}:\n{sim_text}"
        );
    }

    run(Command::new("apt-get")
        .args(["purge", "-y", "-q", "smtp-bridge"])
        .env("DEBIAN_FRONTEND", "noninteractive"));
    assert!(!package_installed("smtp-bridge"));
    assert_no_daemon_user("after the purge");
    let after = system_snapshot();
    assert!(
        before == after,
        "purge did not leave the machine as it was:\n{}",
        diff(&before, &after)
    );
}
