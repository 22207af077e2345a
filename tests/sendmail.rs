//! The real `sendmail` binary, run the way callers run it, against the stand-in bridge:
//! exit codes, silence on success, the stdin rules, `-t`, the spool fallback when the
//! bridge is down, erroring or hanging, `mailq` and `sendmail -q`, limits, non-ASCII text,
//! a minimal environment, `sh -c`, and an unprivileged user.

mod common;

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{Behaviour, StandInBridge, TestDir};
use smtp_bridge::spool::{QueueEntry, Spool};

/// Every run is bounded: a shim that hangs fails the test instead of the suite.
const RUN_LIMIT: Duration = Duration::from_secs(60);
const NOBODY: u32 = 65534;

/// One test's world: a temp dir with a config and a spool, and a stand-in bridge.
struct World {
    dir: TestDir,
    bridge: StandInBridge,
    config: PathBuf,
}

impl World {
    fn new(label: &str) -> World {
        World::with(label, "")
    }

    /// `extra` TOML lines are appended to the config (`sendmail_timeout = 1` is always set,
    /// so a hanging bridge costs one second).
    fn with(label: &str, extra: &str) -> World {
        let dir = TestDir::new(label);
        let bridge = StandInBridge::start();
        let config = common::write_config(
            &dir.path,
            &bridge.url,
            &format!("sendmail_timeout = 1\nbridge_timeout = 2\n{extra}"),
        );
        World {
            dir,
            bridge,
            config,
        }
    }

    fn spool(&self) -> PathBuf {
        self.dir.join("spool")
    }

    fn call(&self, args: &[&str]) -> Call<'_> {
        Call {
            world: self,
            args: args.iter().map(|a| a.to_string()).collect(),
            input: Vec::new(),
            arg0: None,
            as_uid: None,
            minimal_env: false,
            shell: false,
            keep_stdin_open: false,
        }
    }

    /// `mailq` (which also takes in what waits in maildrop), then the queue as the library
    /// reads it.
    fn queued(&self) -> Vec<QueueEntry> {
        let out = self.call(&[]).arg0("mailq").run();
        assert_eq!(out.code, 0, "mailq: {out:?}");
        Spool::new(self.spool()).list().expect("list the spool")
    }

    /// Every file under the spool, for checking that nothing was left behind.
    fn spool_files(&self) -> Vec<PathBuf> {
        files_under(&self.spool())
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(files_under(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// One invocation of the shim.
struct Call<'a> {
    world: &'a World,
    args: Vec<String>,
    input: Vec<u8>,
    arg0: Option<String>,
    as_uid: Option<u32>,
    minimal_env: bool,
    shell: bool,
    keep_stdin_open: bool,
}

#[derive(Debug)]
struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Output {
    /// Exit 0 and not a byte on stdout or stderr: what every caller needs on success.
    fn assert_silent_success(&self) {
        assert_eq!(self.code, 0, "{self:?}");
        assert_eq!(self.stdout, "", "stdout must be empty: {self:?}");
        assert_eq!(self.stderr, "", "stderr must be empty: {self:?}");
    }

    /// Exit `code` with exactly one line on stderr, which is returned.
    fn assert_failure(&self, code: i32) -> &str {
        assert_eq!(self.code, code, "{self:?}");
        assert_eq!(self.stderr.lines().count(), 1, "one stderr line: {self:?}");
        assert!(self.stderr.starts_with("sendmail: "), "{self:?}");
        self.stderr.trim_end()
    }
}

impl<'a> Call<'a> {
    fn stdin(mut self, input: &[u8]) -> Self {
        self.input = input.to_vec();
        self
    }
    fn arg0(mut self, name: &str) -> Self {
        self.arg0 = Some(name.to_owned());
        self
    }
    fn by_nobody(self) -> Self {
        self.by_uid(NOBODY)
    }
    /// Runs as `uid` (with nobody's group) when the tests run as root.
    fn by_uid(mut self, uid: u32) -> Self {
        self.as_uid = Some(uid);
        self
    }
    fn minimal_env(mut self) -> Self {
        self.minimal_env = true;
        self
    }
    fn under_sh(mut self) -> Self {
        self.shell = true;
        self
    }
    fn keep_stdin_open(mut self) -> Self {
        self.keep_stdin_open = true;
        self
    }

    fn run(self) -> Output {
        let bin = common::sendmail_bin();
        let mut cmd = if self.shell {
            // The way PHP and git send-email run it: one shell command line.
            let mut line = shell_quote(&bin.display().to_string());
            for arg in &self.args {
                line.push(' ');
                line.push_str(&shell_quote(arg));
            }
            let mut cmd = Command::new("/bin/sh");
            cmd.arg("-c").arg(line);
            cmd
        } else {
            let mut cmd = Command::new(&bin);
            cmd.args(&self.args);
            if let Some(name) = &self.arg0 {
                cmd.arg0(name);
            }
            cmd
        };
        if self.minimal_env {
            // cron's environment: no HOME, no USER, a minimal PATH.
            cmd.env_clear().env("PATH", "/usr/bin:/bin");
        }
        cmd.env("SMTP_BRIDGE_CONFIG", &self.world.config);
        if let (Some(uid), true) = (self.as_uid, is_root()) {
            unsafe {
                cmd.pre_exec(move || {
                    let gid = nix::unistd::Gid::from_raw(NOBODY);
                    nix::unistd::setgroups(&[gid])?;
                    nix::unistd::setgid(gid)?;
                    nix::unistd::setuid(nix::unistd::Uid::from_raw(uid))?;
                    Ok(())
                });
            }
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn sendmail");
        let mut stdin = child.stdin.take().expect("stdin");
        let input = self.input.clone();
        let keep_open = self.keep_stdin_open;
        let writer = thread::spawn(move || {
            // The shim may stop reading at a lone dot: a broken pipe here is expected.
            let _ = stdin.write_all(&input);
            if keep_open {
                thread::sleep(RUN_LIMIT);
            }
        });
        let start = Instant::now();
        loop {
            match child.try_wait().expect("wait") {
                Some(_) => break,
                None if start.elapsed() > RUN_LIMIT => {
                    let _ = child.kill();
                    panic!(
                        "sendmail {:?} did not finish within {RUN_LIMIT:?}",
                        self.args
                    );
                }
                None => thread::sleep(Duration::from_millis(10)),
            }
        }
        let out = child.wait_with_output().expect("output");
        if !keep_open {
            let _ = writer.join();
        }
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// Brings the stand-in bridge back and waits until it listens again (it rebinds its port
/// in the background), without sending it a request.
fn bridge_up(world: &World) {
    world.bridge.set_behaviour(Behaviour::Accept);
    let listening = common::wait_until(Duration::from_secs(10), || {
        // Binding fails once the stand-in listens on the port again.
        std::net::TcpListener::bind(world.bridge.addr).is_err()
    });
    assert!(listening, "the stand-in bridge did not come back");
}

fn wait_digests(world: &World, n: usize) -> Vec<String> {
    world
        .bridge
        .wait_for(n, Duration::from_secs(20))
        .into_iter()
        .map(|r| r.reply)
        .collect()
}

const CRON_MAIL: &[u8] = b"From: root (Cron Daemon)\nTo: root\nSubject: Cron <root@host> run-parts /etc/cron.daily\nMIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\nContent-Transfer-Encoding: 8bit\nX-Cron-Env: <SHELL=/bin/sh>\n\n/etc/cron.daily/logrotate: error: skipping\n";

#[test]
fn delivers_directly_and_silently() {
    let w = World::new("direct");
    let out = w
        .call(&["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"])
        .stdin(CRON_MAIL)
        .run();
    out.assert_silent_success();
    let got = wait_digests(&w, 1);
    assert!(
        got[0].contains("Cron <root@host> run-parts /etc/cron.daily"),
        "{}",
        got[0]
    );
    assert!(got[0].contains("logrotate: error: skipping"), "{}", got[0]);
    assert_eq!(w.bridge.received()[0].name, "testhost");
    assert!(w
        .spool_files()
        .iter()
        .all(|p| !p.starts_with(w.spool().join("queue"))));
    assert!(
        w.bridge.rejections().is_empty(),
        "{:?}",
        w.bridge.rejections()
    );
}

#[test]
fn lone_dot_ends_input_unless_dash_i() {
    let w = World::new("dot");
    let msg = b"Subject: dots\n\nbefore\n..double\n.\nafter the dot\n";
    w.call(&["a@x"]).stdin(msg).run().assert_silent_success();
    let got = wait_digests(&w, 1);
    assert!(got[0].contains("before"), "{}", got[0]);
    assert!(got[0].contains("..double"), "no unstuffing: {}", got[0]);
    assert!(!got[0].contains("after the dot"), "{}", got[0]);

    w.call(&["-i", "a@x"])
        .stdin(msg)
        .run()
        .assert_silent_success();
    w.call(&["-oi", "a@x"])
        .stdin(msg)
        .run()
        .assert_silent_success();
    let got = wait_digests(&w, 3);
    for reply in &got[1..] {
        assert!(reply.contains("after the dot"), "{reply}");
    }

    // `.\r\n` ends input too, and the shim does not wait for EOF after it.
    let out = w
        .call(&["a@x"])
        .stdin(b"Subject: crlf dot\r\n\r\nbody\r\n.\r\n")
        .keep_stdin_open()
        .run();
    out.assert_silent_success();
    let got = wait_digests(&w, 4);
    assert!(
        got[3].contains("crlf dot") && got[3].contains("body"),
        "{}",
        got[3]
    );
}

#[test]
fn crlf_and_lf_mixed_like_php() {
    let w = World::new("crlf");
    let msg = b"To: r@x\r\nSubject: php mail\r\nFrom: web@x\r\n\r\nline one\nline two\n";
    w.call(&["-t", "-i"])
        .stdin(msg)
        .run()
        .assert_silent_success();
    let got = wait_digests(&w, 1);
    assert!(
        got[0].contains("php mail") && got[0].contains("line two"),
        "{}",
        got[0]
    );
    assert!(!got[0].contains('\r'), "{:?}", got[0]);
}

#[test]
fn envelope_from_args_headers_and_from_line() {
    let w = World::new("envelope");
    w.bridge.set_behaviour(Behaviour::Down);
    // -t takes the union with argv; Bcc is a recipient; duplicates are merged.
    let msg = b"To: A <a@x>, b@y\nCc: c@z\nBcc: hidden@x\nSubject: union\n\nbody\n";
    w.call(&["-t", "-i", "-f", "me@x", "argv@x", "a@x"])
        .stdin(msg)
        .run()
        .assert_silent_success();
    // Resent- headers replace the normal ones.
    let msg = b"To: old@x\nRESENT-TO: new@x\nresent-cc: new2@x\nSubject: resent\n\nbody\n";
    w.call(&["-t"]).stdin(msg).run().assert_silent_success();
    // Comma lists in one argument; a From_ line gives the sender without -f.
    let msg = b"From bounce@list.example Tue Nov 24 14:00:00 2026\nSubject: from line\n\nbody\n";
    w.call(&["a@x, B <b@y>", "undisclosed-recipients:;"])
        .stdin(msg)
        .run()
        .assert_silent_success();
    // -f '' and -f '<>' are the null sender; no -f is login@hostname.
    w.call(&["-f", "", "a@x"])
        .stdin(b"\n")
        .run()
        .assert_silent_success();
    w.call(&["-f<>", "a@x"])
        .stdin(b"\n")
        .run()
        .assert_silent_success();
    w.call(&["a@x"]).stdin(b"\n").run().assert_silent_success();

    let q = w.queued();
    let got: Vec<(String, Vec<String>)> = q
        .iter()
        .map(|e| (e.envelope.sender.clone(), e.envelope.recipients.clone()))
        .collect();
    let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        got,
        vec![
            (
                "me@x".into(),
                v(&["argv@x", "a@x", "b@y", "c@z", "hidden@x"])
            ),
            ("root@testhost".into(), v(&["new@x", "new2@x"])),
            ("bounce@list.example".into(), v(&["a@x", "b@y"])),
            (String::new(), v(&["a@x"])),
            (String::new(), v(&["a@x"])),
            ("root@testhost".into(), v(&["a@x"])),
        ]
        .into_iter()
        .map(|(s, r)| if is_root() {
            (s, r)
        } else {
            (s.replace("root", &whoami()), r)
        })
        .collect::<Vec<_>>()
    );
    match &q[0].envelope.origin {
        smtp_bridge::envelope::Origin::Local { uid, .. } => {
            assert_eq!(*uid, nix::unistd::getuid().as_raw())
        }
        other => panic!("origin {other:?}"),
    }
    // The From_ line is not part of the message.
    let (_, raw) = Spool::new(w.spool()).read(&q[2].id, 1 << 20).unwrap();
    assert_eq!(raw, b"Subject: from line\n\nbody\n");
}

fn whoami() -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| format!("uid{}", nix::unistd::getuid()))
}

#[test]
fn bcc_is_never_a_visible_header() {
    let w = World::new("bcc");
    let msg = b"To: a@x\nBcc: secret@x\nSubject: bcc test\n\nbody\n";
    w.call(&["-t", "-i"])
        .stdin(msg)
        .run()
        .assert_silent_success();
    let got = wait_digests(&w, 1);
    assert!(!got[0].contains("Bcc: secret@x"), "{}", got[0]);
    assert!(
        got[0].contains("secret@x"),
        "listed as an envelope recipient: {}",
        got[0]
    );
}

/// Bridge down, erroring or hanging: exit 0, the message waits in the spool and shows in
/// `mailq`; `sendmail -q` delivers it exactly once with the text a direct delivery has.
#[test]
fn bridge_failures_are_invisible_and_the_queue_delivers_once() {
    for behaviour in [Behaviour::Down, Behaviour::Status(500), Behaviour::Hang] {
        let w = World::new("fallback");
        w.call(&["-i", "direct@x"])
            .stdin(b"Subject: reference\n\nsame text\n")
            .run()
            .assert_silent_success();
        let reference = wait_digests(&w, 1).remove(0);

        w.bridge.set_behaviour(behaviour);
        let out = w
            .call(&["-i", "direct@x"])
            .stdin(b"Subject: reference\n\nsame text\n")
            .run();
        out.assert_silent_success();

        let mailq = w.call(&[]).arg0("mailq").run();
        assert_eq!(mailq.code, 0, "{mailq:?}");
        assert_eq!(mailq.stdout.lines().count(), 2, "{behaviour:?}: {mailq:?}");
        assert!(
            mailq.stdout.ends_with(" Kbytes in 1 Request.\n"),
            "{behaviour:?}: {mailq:?}"
        );
        assert!(mailq.stdout.contains("direct@x"), "{mailq:?}");
        // What the bridge said, as for a message the daemon tried.
        assert!(mailq.stdout.contains("  (sendmail: "), "{mailq:?}");
        let bp = w.call(&["-bp"]).run();
        assert_eq!(bp.stdout, mailq.stdout);

        bridge_up(&w);
        let run = w.call(&["-q", "-v"]).run();
        assert_eq!(run.code, 0, "{run:?}");
        assert_eq!(run.stdout, "delivered 1, deferred 0, failed 0\n", "{run:?}");
        let got = wait_digests(&w, 2);
        let strip_dates = |s: &str| {
            s.lines()
                .filter(|l| !l.to_ascii_lowercase().contains("date"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(
            strip_dates(&got[1]),
            strip_dates(&reference),
            "{behaviour:?}"
        );

        let again = w.call(&["-q", "-v"]).run();
        assert_eq!(
            again.stdout, "delivered 0, deferred 0, failed 0\n",
            "{again:?}"
        );
        let mailq = w.call(&[]).arg0("mailq").run();
        assert_eq!(mailq.stdout, "Mail queue is empty\n");
        assert_eq!(w.bridge.received().len(), 2, "{behaviour:?}: exactly once");
    }
}

#[test]
fn cannot_spool_and_bridge_down_exits_75_leaving_nothing() {
    // A spool under a regular file cannot be created even by root.
    let dir = TestDir::new("nospool");
    let bridge = StandInBridge::start();
    std::fs::write(dir.join("blocker"), b"").unwrap();
    let config = dir.join("smtp_bridge.conf");
    std::fs::write(
        &config,
        format!(
            "queue = \"{}\"\nname = \"testhost\"\nhostname = \"testhost\"\nspool_dir = \"{}\"\nsendmail_timeout = 1\n",
            bridge.url,
            dir.join("blocker/spool").display()
        ),
    )
    .unwrap();
    bridge.set_behaviour(Behaviour::Down);
    let w = World {
        dir,
        bridge,
        config,
    };
    let out = w.call(&["-i", "a@x"]).stdin(b"Subject: lost?\n\nx\n").run();
    let line = out.assert_failure(75);
    // The line names the directory that could not be written.
    let spool = w.dir.join("blocker/spool");
    assert!(
        line.starts_with(&format!(
            "sendmail: cannot queue message: {}/",
            spool.display()
        )),
        "{line}"
    );
    assert_eq!(out.stdout, "");
    let mut left: Vec<_> = files_under(&w.dir.path);
    left.sort();
    assert_eq!(
        left,
        vec![w.dir.join("blocker"), w.dir.join("smtp_bridge.conf")]
    );

    // The same message goes through when the bridge is up: spooling is the fallback.
    bridge_up(&w);
    w.call(&["-i", "a@x"])
        .stdin(b"Subject: lost?\n\nx\n")
        .run()
        .assert_silent_success();
    wait_digests(&w, 1);
}

#[test]
fn unwritable_maildrop_for_an_ordinary_user_exits_75() {
    if !is_root() && !common::require_root() {
        return;
    }
    let w = World::new("rodrop");
    Spool::new(w.spool()).prepare(None).unwrap();
    // maildrop/ owned by root and not writable by others.
    let maildrop = w.spool().join("maildrop");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&maildrop, std::fs::Permissions::from_mode(0o755)).unwrap();
    w.bridge.set_behaviour(Behaviour::Down);
    let out = w
        .call(&["-i", "a@x"])
        .stdin(b"Subject: s\n\nx\n")
        .by_nobody()
        .run();
    let line = out.assert_failure(75);
    assert!(
        line.starts_with(&format!(
            "sendmail: cannot queue message: {}: ",
            maildrop.display()
        )),
        "{line}"
    );
    assert!(files_under(&maildrop).is_empty());
}

#[test]
fn too_large_exits_65_and_spools_nothing() {
    let w = World::with("large", "max_message_size = 1000");
    w.bridge.set_behaviour(Behaviour::Down);
    let mut msg = b"Subject: big\n\n".to_vec();
    msg.extend(std::iter::repeat_n(b'x', 5000));
    let out = w.call(&["-i", "a@x"]).stdin(&msg).run();
    out.assert_failure(65);
    assert!(out.stderr.contains("too large"), "{out:?}");
    assert!(
        w.spool_files()
            .iter()
            .all(|p| !p.starts_with(w.spool().join("maildrop"))
                && !p.starts_with(w.spool().join("queue"))),
        "{:?}",
        w.spool_files()
    );
}

#[test]
fn large_message_streams_whole_into_the_spool() {
    // Larger than the 4 MiB the digest reads, with a line far over 2048 bytes: spooled whole.
    let w = World::new("stream");
    w.bridge.set_behaviour(Behaviour::Down);
    let mut msg = b"To: t@x\nSubject: huge\n\n".to_vec();
    msg.extend(std::iter::repeat_n(b'y', 10_000));
    msg.push(b'\n');
    for i in 0..150_000u32 {
        msg.extend_from_slice(format!("line {i:08} of a long message body\n").as_bytes());
    }
    assert!(msg.len() > smtp_bridge::digest::MAX_PARSE_BYTES);
    w.call(&["-t"]).stdin(&msg).run().assert_silent_success();
    let q = w.queued();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].envelope.recipients, vec!["t@x".to_string()]);
    assert_eq!(q[0].size, msg.len() as u64);
    let (_, raw) = Spool::new(w.spool()).read(&q[0].id, 64 << 20).unwrap();
    assert!(raw == msg, "the spooled message differs from the input");
}

#[test]
fn non_ascii_arrives_readable() {
    let w = World::new("charset");
    let messages: &[(&[u8], &[&str])] = &[
        (
            b"Subject: =?UTF-8?B?QmFja3VwIOKchSBkb25lIPCfjok=?=\nMIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\nContent-Transfer-Encoding: 8bit\n\nR\xc3\xa9sum\xc3\xa9 \xf0\x9f\x9a\x80 ok\n",
            &["Backup \u{2705} done \u{1f389}", "R\u{e9}sum\u{e9} \u{1f680} ok"],
        ),
        (
            b"Subject: latin1\nMIME-Version: 1.0\nContent-Type: text/plain; charset=ISO-8859-1\nContent-Transfer-Encoding: 8bit\n\nGr\xfc\xdfe aus K\xf6ln\n",
            &["Gr\u{fc}\u{df}e aus K\u{f6}ln"],
        ),
        (
            b"Subject: =?ISO-2022-JP?B?GyRCRnxLXDhsJE43b0w+GyhC?=\nMIME-Version: 1.0\nContent-Type: text/plain; charset=ISO-2022-JP\nContent-Transfer-Encoding: 7bit\n\n\x1b$BF|K\\8l$N%F%9%H\x1b(B\n",
            &["\u{65e5}\u{672c}\u{8a9e}\u{306e}\u{4ef6}\u{540d}", "\u{65e5}\u{672c}\u{8a9e}\u{306e}\u{30c6}\u{30b9}\u{30c8}"],
        ),
    ];
    for (i, (msg, want)) in messages.iter().enumerate() {
        w.call(&["-i", "a@x"])
            .stdin(msg)
            .run()
            .assert_silent_success();
        let got = wait_digests(&w, i + 1);
        for text in *want {
            assert!(got[i].contains(text), "want {text:?} in {:?}", got[i]);
        }
    }
    assert!(
        w.bridge.rejections().is_empty(),
        "{:?}",
        w.bridge.rejections()
    );
}

#[test]
fn minimal_environment_and_sh_c() {
    let w = World::new("env");
    w.call(&["-i", "root"])
        .stdin(b"Subject: env -i\n\nno HOME\n")
        .minimal_env()
        .run()
        .assert_silent_success();
    w.call(&["-t", "-i", "-fbounce@x"])
        .stdin(b"To: r@x\nSubject: sh -c\n\nvia a shell\n")
        .under_sh()
        .minimal_env()
        .run()
        .assert_silent_success();
    let got = wait_digests(&w, 2);
    assert!(got[0].contains("no HOME"), "{}", got[0]);
    assert!(got[1].contains("via a shell"), "{}", got[1]);
}

#[test]
fn an_ordinary_user_submits_and_spools() {
    if !is_root() && !common::require_root() {
        return;
    }
    let w = World::new("nobody");
    // As the daemon leaves it: the spool belongs to nobody, maildrop is 1733.
    Spool::new(w.spool())
        .prepare(Some((NOBODY, NOBODY)))
        .unwrap();
    w.call(&["-i", "a@x"])
        .stdin(b"Subject: from nobody\n\ndirect\n")
        .by_nobody()
        .minimal_env()
        .run()
        .assert_silent_success();
    w.bridge.set_behaviour(Behaviour::Down);
    w.call(&["-i", "a@x"])
        .stdin(b"Subject: from nobody\n\nspooled\n")
        .by_nobody()
        .run()
        .assert_silent_success();
    // nobody owns this spool, so nobody may list it; root may too.
    let mailq = w.call(&[]).arg0("mailq").by_nobody().run();
    assert_eq!(mailq.code, 0, "{mailq:?}");
    assert!(mailq.stdout.contains("<nobody@testhost>"), "{mailq:?}");
    bridge_up(&w);
    let run = w.call(&["-q", "-v"]).run();
    assert_eq!(run.stdout, "delivered 1, deferred 0, failed 0\n", "{run:?}");
    let got = wait_digests(&w, 2);
    assert!(got[1].contains("spooled"), "{}", got[1]);
}

#[test]
fn a_uid_without_a_passwd_entry() {
    if !is_root() && !common::require_root() {
        return;
    }
    const STRANGER: u32 = 54321;
    assert!(
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(STRANGER))
            .unwrap()
            .is_none()
    );
    let w = World::new("stranger");
    Spool::new(w.spool())
        .prepare(Some((NOBODY, NOBODY)))
        .unwrap();
    w.bridge.set_behaviour(Behaviour::Down);
    w.call(&["-i", "a@x"])
        .stdin(b"Subject: s\n\nx\n")
        .by_uid(STRANGER)
        .minimal_env()
        .run()
        .assert_silent_success();
    let q = w.queued();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].envelope.sender, "uid54321@testhost");
    assert_eq!(
        q[0].envelope.origin,
        smtp_bridge::envelope::Origin::Local {
            uid: STRANGER,
            user: "uid54321".into(),
            full_name: None,
        }
    );
}

#[test]
fn root_leaves_only_files_the_spool_owner_owns() {
    if !is_root() && !common::require_root() {
        return;
    }
    let w = World::new("rootdrop");
    w.bridge.set_behaviour(Behaviour::Down);
    // No spool yet: root's sendmail creates it for the daemon user (nobody), then spools as
    // that user.
    w.call(&["-i", "a@x"])
        .stdin(b"Subject: s\n\nx\n")
        .run()
        .assert_silent_success();
    let mut paths = w.spool_files();
    paths.push(w.spool());
    assert!(paths.len() > 1, "{paths:?}");
    for path in paths {
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.uid(), NOBODY, "{}", path.display());
    }
    // And root still sees and runs the queue.
    assert_eq!(w.queued().len(), 1);
}

#[test]
fn queue_listing_needs_rights() {
    if !is_root() && !common::require_root() {
        return;
    }
    let w = World::new("perm");
    Spool::new(w.spool()).prepare(None).unwrap();
    // No daemon answers for the queue: Postfix's "mail system is down" (69).
    let out = w.call(&[]).arg0("mailq").by_nobody().run();
    let line = out.assert_failure(69);
    assert!(line.contains("mail system is down"), "{line}");
    let out = w.call(&["-q"]).by_nobody().run();
    out.assert_failure(69);
}

#[test]
fn modes_and_exit_codes() {
    let w = World::new("modes");
    struct Case {
        args: &'static [&'static str],
        arg0: Option<&'static str>,
        code: i32,
        stdout: &'static str,
    }
    let cases = [
        Case {
            args: &["-bv", "a@x", "B <b@y>"],
            arg0: None,
            code: 0,
            stdout: "a@x... deliverable\nb@y... deliverable\n",
        },
        Case {
            args: &["-bi"],
            arg0: None,
            code: 0,
            stdout: "",
        },
        Case {
            args: &["-I"],
            arg0: None,
            code: 0,
            stdout: "",
        },
        Case {
            args: &[],
            arg0: Some("newaliases"),
            code: 0,
            stdout: "",
        },
        Case {
            args: &["-bd"],
            arg0: None,
            code: 0,
            stdout: "",
        },
        Case {
            args: &["-bl"],
            arg0: None,
            code: 0,
            stdout: "",
        },
        Case {
            args: &["-bh"],
            arg0: None,
            code: 0,
            stdout: "",
        },
        Case {
            args: &["-bH"],
            arg0: None,
            code: 0,
            stdout: "",
        },
        Case {
            args: &["-q30m"],
            arg0: None,
            code: 0,
            stdout: "",
        },
        Case {
            args: &["-bd", "-q1h"],
            arg0: None,
            code: 0,
            stdout: "",
        },
        Case {
            args: &["-bt"],
            arg0: None,
            code: 64,
            stdout: "",
        },
        Case {
            args: &["-ba"],
            arg0: None,
            code: 64,
            stdout: "",
        },
        Case {
            args: &["-bD"],
            arg0: None,
            code: 64,
            stdout: "",
        },
        Case {
            args: &["-bP"],
            arg0: None,
            code: 64,
            stdout: "",
        },
        Case {
            args: &["-bz"],
            arg0: None,
            code: 64,
            stdout: "",
        },
        Case {
            args: &["-t", "-bv", "a@x"],
            arg0: None,
            code: 64,
            stdout: "",
        },
        Case {
            args: &["-bv"],
            arg0: None,
            code: 64,
            stdout: "",
        },
        Case {
            args: &["-f"],
            arg0: None,
            code: 64,
            stdout: "",
        },
        Case {
            args: &[],
            arg0: Some("mailq"),
            code: 0,
            stdout: "Mail queue is empty\n",
        },
    ];
    for case in cases {
        let mut call = w.call(case.args).keep_stdin_open();
        if let Some(name) = case.arg0 {
            call = call.arg0(name);
        }
        // stdin stays open: a mode that read it would hang (and the run limit fail it).
        let out = call.run();
        assert_eq!(
            out.code, case.code,
            "{:?} {:?}: {out:?}",
            case.arg0, case.args
        );
        assert_eq!(out.stdout, case.stdout, "{:?}", case.args);
        if case.code == 0 {
            assert_eq!(out.stderr, "", "{:?}", case.args);
        } else {
            out.assert_failure(case.code);
        }
    }
    assert_eq!(w.bridge.requests(), 0, "no mode above sends anything");
}

#[test]
fn full_name_names_a_sender_without_from() {
    let w = World::new("fullname");
    w.call(&["-FJane Roe", "-f", "jane@x", "-i", "a@x"])
        .stdin(b"Subject: no from header\n\nx\n")
        .run()
        .assert_silent_success();
    // A From: of its own wins over -F.
    w.call(&["-FCronDaemon", "-i", "a@x"])
        .stdin(b"From: root (Cron Daemon)\nSubject: has from\n\nx\n")
        .run()
        .assert_silent_success();
    let got = wait_digests(&w, 2);
    assert!(got[0].contains("Jane Roe <jane@x>"), "{}", got[0]);
    assert!(!got[1].contains("CronDaemon"), "{}", got[1]);
}

/// `-F` survives the spool: with the bridge down, the digest `sendmail -q` delivers later
/// is byte for byte the PUT body the bridge gets when it takes the same submission at once.
/// Both ways into the spool: the spool owner's `queue/` (root, who becomes the owner) and,
/// when the tests run as root, `maildrop/` (a uid that does not own the spool, whose file
/// is taken in as untrusted).
#[test]
fn full_name_survives_the_spool() {
    const STRANGER: u32 = 54321;
    // Date and Message-ID given, so that nothing in the digest depends on when it is built.
    const MAIL: &[u8] =
        b"To: a@x\nSubject: nightly backup\nDate: Tue, 24 Nov 2026 14:16:26 +0000\n\
Message-ID: <1@x>\n\nall good\n";
    let w = World::new("fullspool");
    let mut callers: Vec<(Option<u32>, Vec<&str>, &str)> =
        vec![(None, vec!["-F", "Cron Daemon", "-i", "a@x"], "Cron Daemon")];
    if is_root() {
        Spool::new(w.spool())
            .prepare(Some((NOBODY, NOBODY)))
            .unwrap();
        callers.push((
            Some(STRANGER),
            vec!["-FJane Roe", "-oi", "--", "a@x"],
            "Jane Roe",
        ));
    } else if common::require_root() {
        unreachable!("require_root fails under CI");
    }
    for (uid, args, name) in callers {
        let call = |args: &[&str]| {
            let call = w.call(args).stdin(MAIL);
            match uid {
                Some(uid) => call.by_uid(uid),
                None => call,
            }
        };
        let seen = w.bridge.received().len();
        call(&args).run().assert_silent_success();
        let direct = w.bridge.wait_for(seen + 1, Duration::from_secs(20))[seen].clone();
        assert!(
            direct.reply.contains(&format!("\nFrom: {name} <")),
            "{uid:?}: {}",
            direct.reply
        );

        w.bridge.set_behaviour(Behaviour::Down);
        call(&args).run().assert_silent_success();
        let queued = w.queued();
        assert_eq!(queued.len(), 1, "{uid:?}: {queued:?}");
        assert_eq!(queued[0].envelope.origin.full_name(), Some(name));
        // mailq stays Postfix-shaped: the sender address, never the full name.
        let mailq = w.call(&[]).arg0("mailq").run();
        assert!(!mailq.stdout.contains(name), "{mailq:?}");

        bridge_up(&w);
        let run = w.call(&["-q", "-v"]).run();
        assert_eq!(run.stdout, "delivered 1, deferred 0, failed 0\n", "{run:?}");
        let spooled = w.bridge.wait_for(seen + 2, Duration::from_secs(20))[seen + 1].clone();
        assert_eq!(spooled.body, direct.body, "{uid:?}");
    }
}

#[test]
fn unknown_options_are_accepted() {
    let w = World::new("unknown");
    w.call(&[
        "-Z",
        "--frobnicate",
        "-K",
        "-oQ/x",
        "-Bbogus",
        "-N",
        "never",
        "-i",
        "a@x",
    ])
    .stdin(b"Subject: tolerant\n\nx\n")
    .run()
    .assert_silent_success();
    assert!(wait_digests(&w, 1)[0].contains("tolerant"));
    // -e takes a value, glued or not: `-eq` is not a queue run that leaves the message
    // unread, and `-ep` does not make the recipient the value of -p.
    for (i, args) in [&["-eq", "r@x"][..], &["-ep", "r@x"], &["-e", "m", "r@x"]]
        .iter()
        .enumerate()
    {
        w.call(args)
            .stdin(format!("Subject: error style {i}\n\nx\n").as_bytes())
            .run()
            .assert_silent_success();
        let got = wait_digests(&w, i + 2);
        let digest = &got[i + 1];
        assert!(
            digest.contains(&format!("error style {i}")),
            "{args:?}: {digest}"
        );
        assert!(
            digest.contains("r@x") && !digest.contains("no recipients"),
            "{args:?}: {digest}"
        );
    }
}

#[test]
fn help_and_version_print_and_send_nothing() {
    let w = World::new("help");
    let help = w.call(&["--help"]).run();
    assert_eq!((help.code, help.stderr.as_str()), (0, ""), "{help:?}");
    assert!(help.stdout.starts_with("usage: sendmail "), "{help:?}");
    let version = w.call(&["--version"]).run();
    assert_eq!(
        version.stdout,
        format!("sendmail (smtp_bridge) {}\n", env!("CARGO_PKG_VERSION"))
    );
    // Neither reads stdin nor sends, even with the stdin of a terminal left open.
    let help = w.call(&["--help"]).keep_stdin_open().run();
    assert_eq!(help.code, 0, "{help:?}");
    thread::sleep(Duration::from_millis(200));
    assert_eq!(w.bridge.requests(), 0);
    assert!(w.spool_files().is_empty(), "{:?}", w.spool_files());
}

#[test]
fn no_recipients_and_empty_input() {
    let w = World::new("norcpt");
    // No recipients at all: forwarded (the digest says so), exit 0.
    w.call(&["-i"])
        .stdin(b"Subject: nobody to\n\nx\n")
        .run()
        .assert_silent_success();
    w.call(&["-t"])
        .stdin(b"Subject: nobody to\n\nx\n")
        .run()
        .assert_silent_success();
    // Empty input with a recipient: an empty message is still a message.
    w.call(&["a@x"]).stdin(b"").run().assert_silent_success();
    let got = wait_digests(&w, 3);
    assert!(got[0].contains("no recipients"), "{}", got[0]);
    assert!(got[1].contains("no recipients"), "{}", got[1]);
    assert!(got[2].contains("a@x"), "{}", got[2]);

    let strict = World::with("strict", "strict_recipients = true");
    let out = strict.call(&["-t"]).stdin(b"Subject: s\n\nx\n").run();
    out.assert_failure(64);
    strict
        .call(&["a@x"])
        .stdin(b"Subject: s\n\nx\n")
        .run()
        .assert_silent_success();
    wait_digests(&strict, 1);
    assert_eq!(strict.bridge.received().len(), 1);
}

#[test]
fn backlog_keeps_order() {
    let w = World::new("order");
    w.bridge.set_behaviour(Behaviour::Down);
    w.call(&["a@x"])
        .stdin(b"Subject: first\n\n1\n")
        .run()
        .assert_silent_success();
    // Whoever runs the queue marks the backlog when delivery fails.
    let run = w.call(&["-q", "-v"]).run();
    assert_eq!(run.stdout, "delivered 0, deferred 1, failed 0\n", "{run:?}");
    bridge_up(&w);
    // The bridge is back, but "first" still waits: "second" must queue behind it.
    w.call(&["a@x"])
        .stdin(b"Subject: second\n\n2\n")
        .run()
        .assert_silent_success();
    assert_eq!(w.bridge.requests(), 0, "second must not overtake first");
    let run = w.call(&["-q", "-v"]).run();
    assert_eq!(run.stdout, "delivered 2, deferred 0, failed 0\n", "{run:?}");
    let got = wait_digests(&w, 2);
    assert!(
        got[0].contains("first") && got[1].contains("second"),
        "{got:?}"
    );
    // Drained: new mail goes straight to the bridge again.
    w.call(&["a@x"])
        .stdin(b"Subject: third\n\n3\n")
        .run()
        .assert_silent_success();
    assert_eq!(w.bridge.received().len(), 3);
    assert!(w.queued().is_empty());
    // A run that stops at a failure counts what it did not try.
    w.bridge.set_behaviour(Behaviour::Down);
    for n in 0..3 {
        w.call(&["a@x"])
            .stdin(format!("Subject: later {n}\n\nx\n").as_bytes())
            .run()
            .assert_silent_success();
    }
    let run = w.call(&["-q", "-v"]).run();
    assert_eq!(
        run.stdout, "delivered 0, deferred 1, failed 0, 2 more waiting\n",
        "{run:?}"
    );
}

/// Mail an ordinary user left in the maildrop (the bridge was down) is not overtaken by
/// later mail once the bridge is back, from root or from another user: both queue behind it
/// until the queue runs, and then all go out in the order they were submitted.
#[test]
fn maildrop_keeps_order() {
    if !is_root() && !common::require_root() {
        return;
    }
    const USER: u32 = 54322;
    let w = World::new("droporder");
    Spool::new(w.spool())
        .prepare(Some((NOBODY, NOBODY)))
        .unwrap();
    let mark = w
        .spool()
        .join("maildrop")
        .join(smtp_bridge::spool::MAILDROP_MARK);
    w.bridge.set_behaviour(Behaviour::Down);
    w.call(&["-i", "a@x"])
        .stdin(b"Subject: first\n\n1\n")
        .by_uid(USER)
        .run()
        .assert_silent_success();
    assert!(mark.exists(), "the drop-off left no mark");
    bridge_up(&w);
    w.call(&["-i", "a@x"])
        .stdin(b"Subject: second\n\n2\n")
        .run()
        .assert_silent_success();
    w.call(&["-i", "a@x"])
        .stdin(b"Subject: third\n\n3\n")
        .by_uid(USER + 1)
        .run()
        .assert_silent_success();
    assert_eq!(w.bridge.requests(), 0, "later mail overtook the maildrop");
    let run = w.call(&["-q", "-v"]).run();
    assert_eq!(run.stdout, "delivered 3, deferred 0, failed 0\n", "{run:?}");
    let got = wait_digests(&w, 3);
    for (digest, subject) in got.iter().zip(["first", "second", "third"]) {
        assert!(digest.contains(&format!("Subject: {subject}")), "{got:?}");
    }
    assert!(!mark.exists(), "taking the maildrop in leaves the mark");
    // Drained: mail goes straight to the bridge again.
    w.call(&["-i", "a@x"])
        .stdin(b"Subject: fourth\n\n4\n")
        .by_uid(USER)
        .run()
        .assert_silent_success();
    assert_eq!(w.bridge.received().len(), 4);
    // mailq taking a drop-off in marks the backlog, so root's mail still waits behind it.
    w.bridge.set_behaviour(Behaviour::Down);
    w.call(&["-i", "a@x"])
        .stdin(b"Subject: fifth\n\n5\n")
        .by_uid(USER)
        .run()
        .assert_silent_success();
    bridge_up(&w);
    assert_eq!(w.queued().len(), 1);
    w.call(&["-i", "a@x"])
        .stdin(b"Subject: sixth\n\n6\n")
        .run()
        .assert_silent_success();
    assert_eq!(w.bridge.received().len(), 4, "sixth overtook fifth");
}

#[test]
fn smtp_on_stdin() {
    let w = World::new("bs");
    let session = b"EHLO client.example\r\nMAIL FROM:<app@x>\r\nRCPT TO:<r@y>\r\nDATA\r\nSubject: over -bs\r\n\r\n..stuffed\r\nbody\r\n.\r\nQUIT\r\n";
    let out = w.call(&["-bs"]).stdin(session).run();
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stderr, "");
    let codes: Vec<&str> = out.stdout.lines().map(|l| &l[..3]).collect();
    assert_eq!(codes.first(), Some(&"220"), "{}", out.stdout);
    assert!(out.stdout.contains("354"), "{}", out.stdout);
    assert!(out.stdout.contains(" queued as "), "{}", out.stdout);
    assert_eq!(codes.last(), Some(&"221"), "{}", out.stdout);
    let got = wait_digests(&w, 1);
    assert!(
        got[0].contains("over -bs") && got[0].contains(".stuffed"),
        "{}",
        got[0]
    );
    assert!(!got[0].contains("..stuffed"), "{}", got[0]);
    // Bridge down: the session still gets 250 once the message is in the spool.
    w.bridge.set_behaviour(Behaviour::Down);
    let out = w.call(&["-bs"]).stdin(session).run();
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains(" queued as "), "{}", out.stdout);
    let q = w.queued();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].envelope.sender, "app@x");
    assert_eq!(q[0].envelope.recipients, vec!["r@y".to_string()]);
    let (_, raw) = Spool::new(w.spool()).read(&q[0].id, 1 << 20).unwrap();
    assert!(raw.windows(10).any(|win| win == b".stuffed\r\n"), "{raw:?}");
}

/// mailq output injection: a local user's control characters (terminal escapes, a forged
/// line) never reach root's terminal: refused in `-f`, arguments, `-t` headers and `From `
/// lines with exit 64, and escaped when `mailq` lists what is already queued.
#[test]
fn mailq_output_injection_is_refused_and_escaped() {
    let w = World::new("inject");
    let hostile = "\"a\x1b]0;x\x07\nFAKE\"@x";
    let refused = [
        w.call(&["-f", hostile, "r@x"])
            .stdin(b"Subject: s\n\nx\n")
            .run(),
        w.call(&["-i", "r@x", hostile])
            .stdin(b"Subject: s\n\nx\n")
            .run(),
        w.call(&["-t"])
            .stdin(b"To: \"b\x1b[2J\"@x\nSubject: s\n\nx\n")
            .run(),
        w.call(&["r@x"])
            .stdin(b"From \"c\x07\"@x Mon Jan  1 00:00:00 2024\nSubject: s\n\nx\n")
            .run(),
    ];
    for out in &refused {
        let line = out.assert_failure(64);
        assert!(line.contains("control character"), "{out:?}");
        assert!(!line.contains('\x1b') && !line.contains('\x07'), "{out:?}");
    }
    assert!(w.bridge.received().is_empty());

    // Already queued (by an older version, or over SMTP before it refused them): escaped.
    let spool = Spool::new(w.spool());
    spool.prepare(None).unwrap();
    let envelope = smtp_bridge::envelope::Envelope {
        sender: "a\x1b]0;x\x07\nFAKE@x".into(),
        recipients: vec!["r\x1b[2J@x".into()],
        origin: smtp_bridge::envelope::Origin::Local {
            uid: 0,
            user: "root".into(),
            full_name: None,
        },
        arrival: std::time::SystemTime::now(),
    };
    let mut writer = spool.create(&envelope).unwrap();
    writer.write_all(b"Subject: s\n\nx\n").unwrap();
    let id = writer.commit().unwrap();
    spool
        .defer(&id, std::time::SystemTime::now(), "HTTP 500\x1b[31m red")
        .unwrap();
    let mailq = w.call(&[]).arg0("mailq").run();
    assert_eq!(mailq.code, 0, "{mailq:?}");
    assert_eq!(mailq.stdout.lines().count(), 2, "{mailq:?}");
    assert!(
        !mailq.stdout.chars().any(|c| c.is_control() && c != '\n'),
        "{mailq:?}"
    );
    assert!(mailq.stdout.contains("a%1B]0;x%07%0AFAKE@x"), "{mailq:?}");
    assert!(mailq.stdout.contains("r%1B[2J@x"), "{mailq:?}");
}

/// A typo in the configuration (after an edit, before the admin noticed) refuses no mail:
/// the message waits in the spool the file names, the bridge the broken file may mean is
/// not tried, the caller sees a silent success, and once the file is fixed a queue run
/// delivers it. `mailq` still says what is wrong (exit 78).
#[test]
fn a_broken_configuration_spools_instead_of_refusing() {
    let w = World::new("sm-rescue");
    // Prepare the spool with a good file first (as the daemon or install.sh would have).
    w.call(&["-i", "first@x"])
        .stdin(b"Subject: before the typo\n\nx\n")
        .run()
        .assert_silent_success();
    wait_digests(&w, 1);
    let good = std::fs::read_to_string(&w.config).unwrap();
    std::fs::write(&w.config, format!("{good}max_body_chars = \"lots\"\n")).unwrap();
    for by_nobody in [false, true] {
        let call = w
            .call(&["-i", "after@x"])
            .stdin(b"Subject: after the typo\n\nx\n");
        let call = if by_nobody { call.by_nobody() } else { call };
        call.run().assert_silent_success();
    }
    assert_eq!(
        w.bridge.requests(),
        1,
        "the bridge was tried with a broken file"
    );
    let mailq = w.call(&[]).arg0("mailq").run();
    let err = mailq.assert_failure(78);
    assert!(err.contains("max_body_chars"), "{err}");
    // Fixed: both wait in the queue (taken in from the maildrop too) and are delivered.
    std::fs::write(&w.config, good).unwrap();
    assert_eq!(w.queued().len(), 2);
    w.call(&["-q"]).run().assert_silent_success();
    let got = wait_digests(&w, 3);
    assert!(got[1].contains("after the typo") && got[2].contains("after the typo"));
}
