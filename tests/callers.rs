//! The real programs that call sendmail, pointed at the built shim, and the recorded argv
//! vectors of those that cannot be pointed elsewhere (their `/usr/sbin/sendmail` is fixed),
//! replayed with the stdin they write. Each test checks what the stand-in bridge received
//! (subject, sender, decoded body) and the caller's own exit status.

mod common;

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{StandInBridge, TestDir};

/// Every run is bounded, so a caller waiting on a hung shim fails instead of hanging.
const RUN_LIMIT: Duration = Duration::from_secs(60);

struct World {
    dir: TestDir,
    bridge: StandInBridge,
    config: PathBuf,
}

impl World {
    fn new(label: &str) -> World {
        let dir = TestDir::new(label);
        let bridge = StandInBridge::start();
        let config = common::write_config(&dir.path, &bridge.url, "sendmail_timeout = 5");
        World {
            dir,
            bridge,
            config,
        }
    }

    /// A command for `program` with the environment a caller passes on to sendmail: our
    /// config, a HOME of its own (mail clients write there), a UTF-8 locale.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("SMTP_BRIDGE_CONFIG", &self.config)
            .env("HOME", &self.dir.path)
            .env("LC_ALL", "C.UTF-8")
            .current_dir(&self.dir.path);
        cmd
    }

    /// The one digest this caller produced, after checking that the bridge saw nothing
    /// it would have refused.
    fn digest(&self) -> String {
        let got = self.bridge.wait_for(1, Duration::from_secs(20));
        assert_eq!(got.len(), 1, "{got:#?}");
        assert!(
            self.bridge.rejections().is_empty(),
            "{:?}",
            self.bridge.rejections()
        );
        got[0].reply.clone()
    }
}

/// Runs `cmd` with `input` on stdin, bounded by [`RUN_LIMIT`].
fn run(mut cmd: Command, input: &[u8]) -> Output {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn caller");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    let writer = thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            panic!("{cmd:?} did not finish within {RUN_LIMIT:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
    let _ = writer.join();
    child.wait_with_output().expect("output")
}

fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn assert_contains(digest: &str, wanted: &[&str]) {
    for text in wanted {
        assert!(
            digest.contains(text),
            "want {text:?} in the digest:\n{digest}"
        );
    }
}

fn shim() -> PathBuf {
    common::sendmail_bin()
}

#[test]
fn s_nail() {
    if !common::require_tool("s-nail") {
        return;
    }
    let w = World::new("s-nail");
    let mut cmd = w.command("s-nail");
    cmd.args(["-n", "-S", "sendwait", "-S", "ttycharset=utf-8"])
        .arg("-S")
        .arg(format!("mta={}", shim().display()))
        .args([
            "-r",
            "alice@example.org",
            "-s",
            "s-nail says Gr\u{fc}\u{df}e",
        ])
        .arg("bob@example.org");
    let out = run(cmd, "Caf\u{e9} au lait \u{2615}\nsecond line\n".as_bytes());
    assert_ok(&out, "s-nail");
    assert_contains(
        &w.digest(),
        &[
            "s-nail says Gr\u{fc}\u{df}e",
            "alice@example.org",
            "Caf\u{e9} au lait \u{2615}",
            "second line",
        ],
    );
}

#[test]
fn gnu_mailutils_mail() {
    if !common::require_tool("mail") {
        return;
    }
    let w = World::new("mailutils");
    let mut cmd = w.command("mail");
    cmd.arg("-E")
        .arg(format!("set sendmail=sendmail://{}", shim().display()))
        .args(["-s", "mailutils subject", "carol@example.org"]);
    let out = run(cmd, b"written by GNU mail\n");
    assert_ok(&out, "mailutils mail");
    // mailutils writes no From:; it passes `-f user@host`, which the digest shows.
    assert_contains(
        &w.digest(),
        &[
            "mailutils subject",
            "written by GNU mail",
            "carol@example.org",
        ],
    );
}

#[test]
fn mutt() {
    if !common::require_tool("mutt") {
        return;
    }
    let w = World::new("mutt");
    let mut cmd = w.command("mutt");
    cmd.args(["-n", "-F", "/dev/null", "-e"])
        .arg(format!("set sendmail=\"{} -oem -oi\"", shim().display()))
        .args(["-e", "set from=\"Dave <dave@example.org>\""])
        .args(["-e", "set send_charset=utf-8"])
        .args(["-s", "mutt subject", "erin@example.org"]);
    let out = run(cmd, "from mutt, na\u{ef}ve r\u{e9}sum\u{e9}\n".as_bytes());
    assert_ok(&out, "mutt");
    assert_contains(
        &w.digest(),
        &[
            "mutt subject",
            "dave@example.org",
            "from mutt, na\u{ef}ve r\u{e9}sum\u{e9}",
        ],
    );
}

#[test]
fn php_mail() {
    if !common::require_tool("php") {
        return;
    }
    let w = World::new("php");
    let mut cmd = w.command("php");
    cmd.arg("-d")
        .arg(format!("sendmail_path={} -t -i", shim().display()))
        .arg("-r")
        .arg(
            r#"$ok = mail("frank@example.org", "=?UTF-8?B?" . base64_encode("PHP \u{1F418} mail") . "?=", "line one\nline two\n.\nafter a lone dot", "From: web@example.org\r\nContent-Type: text/plain; charset=UTF-8", "-fbounce@example.org"); exit($ok ? 0 : 1);"#,
        );
    let out = run(cmd, b"");
    assert_ok(&out, "php mail()");
    // -i: the lone dot in the body does not end the message.
    assert_contains(
        &w.digest(),
        &[
            "PHP \u{1F418} mail",
            "web@example.org",
            "line two",
            "after a lone dot",
        ],
    );
}

#[test]
fn git_send_email() {
    if !common::require_tool("git") {
        return;
    }
    let w = World::new("git");
    let repo = w.dir.join("repo");
    std::fs::create_dir(&repo).unwrap();
    let git = |args: &[&str]| {
        let mut cmd = w.command("git");
        cmd.current_dir(&repo)
            .args(["-c", "user.name=Dev", "-c", "user.email=dev@example.org"])
            .args(args);
        let out = run(cmd, b"");
        assert_ok(&out, &format!("git {args:?}"));
        out
    };
    git(&["init", "-q"]);
    std::fs::write(repo.join("frob.c"), "int frob(void) { return 42; }\n").unwrap();
    git(&["add", "frob.c"]);
    git(&[
        "commit",
        "-q",
        "-m",
        "frob: return the answer",
        "-m",
        "Explained at length.",
    ]);
    let out = git(&[
        "send-email",
        &format!("--sendmail-cmd={}", shim().display()),
        "--to=maint@example.org",
        "--envelope-sender=bounce@example.org",
        "--suppress-cc=all",
        "--from=Dev <dev@example.org>",
        "--confirm=never",
        "--quiet",
        "-1",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Sent [PATCH]"),
        "{out:?}"
    );
    assert_contains(
        &w.digest(),
        &[
            "[PATCH] frob: return the answer",
            "dev@example.org",
            "Explained at length.",
            "return 42;",
        ],
    );
}

#[test]
fn swaks_over_bs() {
    if !common::require_tool("swaks") {
        return;
    }
    let w = World::new("swaks");
    let mut cmd = w.command("swaks");
    cmd.arg("--pipe")
        .arg(format!("{} -bs", shim().display()))
        .args(["--from", "app@example.org", "--to", "ops@example.org"])
        .args(["--header", "Subject: symfony-style -bs"])
        .args(["--body", "sent over sendmail -bs"]);
    let out = run(cmd, b"");
    assert_ok(&out, "swaks --pipe");
    assert_contains(
        &w.digest(),
        &["symfony-style -bs", "sent over sendmail -bs"],
    );
}

/// Symfony Mailer's default transport, `sendmail -bs`, as Symfony and Laravel apps use it:
/// one process, two messages, a Bcc, dot-stuffed lines.
#[test]
fn symfony_mailer_over_bs() {
    const AUTOLOAD: &str = "/usr/share/php/Symfony/Component/Mailer/autoload.php";
    if !common::require_tool("php") {
        return;
    }
    if !Path::new(AUTOLOAD).is_file() {
        assert!(
            !common::under_ci(),
            "php-symfony-mailer is required under CI"
        );
        eprintln!("SKIP: php-symfony-mailer not installed");
        return;
    }
    let w = World::new("symfony");
    let script = w.dir.join("send.php");
    std::fs::write(
        &script,
        r#"<?php
require '/usr/share/php/Symfony/Component/Mailer/autoload.php';
require '/usr/share/php/Symfony/Component/Mime/autoload.php';
use Symfony\Component\Mailer\Mailer;
use Symfony\Component\Mailer\Transport\SendmailTransport;
use Symfony\Component\Mime\Email;
$mailer = new Mailer(new SendmailTransport($argv[1] . ' -bs'));
for ($i = 1; $i <= 2; $i++) {
    $mailer->send((new Email())
        ->from('app@example.org')
        ->to('ops@example.org')
        ->bcc('audit@example.org')
        ->subject("Symfony message $i \u{2713}")
        ->text("Body $i\n.\n..two leading dots\nend"));
}
echo "sent\n";
"#,
    )
    .unwrap();
    let mut cmd = w.command("php");
    cmd.arg(&script).arg(shim());
    let out = run(cmd, b"");
    assert_ok(&out, "symfony mailer");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "sent\n");
    let got = w.bridge.wait_for(2, Duration::from_secs(20));
    assert_eq!(got.len(), 2, "{got:#?}");
    for (i, digest) in got.iter().enumerate() {
        let n = i + 1;
        assert_contains(
            &digest.reply,
            &[
                &format!("Symfony message {n} \u{2713}"),
                "app@example.org",
                &format!("Body {n}"),
                "..two leading dots",
                "audit@example.org",
            ],
        );
        assert!(
            !digest.reply.contains("Bcc: audit@example.org"),
            "{}",
            digest.reply
        );
    }
}

/// A caller whose sendmail path is fixed, replayed: the argv it passes and what it writes.
struct Replay {
    caller: &'static str,
    /// argv[0] as the caller sets it.
    arg0: &'static str,
    args: &'static [&'static str],
    /// Run through `sh -c` (PHP, fail2ban's shell actions).
    shell: bool,
    /// cron's environment: `env -i` plus a minimal PATH.
    cron_env: bool,
    stdin: &'static str,
    /// What the digest must show: subject, sender and body text.
    wanted: &'static [&'static str],
}

const REPLAYS: &[Replay] = &[
    Replay {
        caller: "Debian cron 3.0pl1",
        arg0: "/usr/sbin/sendmail",
        args: &["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"],
        shell: false,
        cron_env: true,
        stdin: "From: root (Cron Daemon)\nTo: root\nSubject: Cron <root@web1> /usr/local/bin/backup\nMIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\nContent-Transfer-Encoding: 8bit\nX-Cron-Env: <SHELL=/bin/sh>\nX-Cron-Env: <HOME=/root>\nX-Cron-Env: <PATH=/usr/bin:/bin>\nX-Cron-Env: <LOGNAME=root>\n\nbackup: 3 files skipped\n.\nstill cron output after a lone dot\n",
        wanted: &["Cron <root@web1> /usr/local/bin/backup", "root", "backup: 3 files skipped", "still cron output after a lone dot"],
    },
    Replay {
        caller: "cronie",
        arg0: "/usr/sbin/sendmail",
        args: &["-FCronDaemon", "-i", "-odi", "-oem", "-oi", "-t", "-f", "root"],
        shell: false,
        cron_env: true,
        stdin: "From: \"(Cron Daemon)\" <root>\nTo: ops@example.org\nSubject: Cron <root@web1> run-parts /etc/cron.hourly\nContent-Type: text/plain; charset=UTF-8\nAuto-Submitted: auto-generated\nPrecedence: bulk\n\nhourly job said hello\n",
        wanted: &["Cron <root@web1> run-parts /etc/cron.hourly", "root", "hourly job said hello"],
    },
    Replay {
        caller: "anacron 2.3",
        arg0: "/usr/sbin/sendmail",
        args: &["-FAnacron", "-odi", "root"],
        shell: false,
        cron_env: true,
        stdin: "From: Anacron <root>\nTo: root\nContent-Type: text/plain; charset=\"UTF-8\"\nSubject: Anacron job 'cron.daily' on web1\n\n/etc/cron.daily/apt-compat:\nE: could not get lock\n",
        wanted: &["Anacron job 'cron.daily' on web1", "root", "E: could not get lock"],
    },
    Replay {
        caller: "atd 3.2.5",
        arg0: "sendmail",
        args: &["-i", "alice"],
        shell: false,
        cron_env: false,
        stdin: "Subject: Output from your job        7\nTo: alice\n\nat job output line\n",
        wanted: &["Output from your job", "at job output line"],
    },
    Replay {
        caller: "logwatch 7.7",
        arg0: "/usr/sbin/sendmail",
        args: &["-t"],
        shell: false,
        cron_env: true,
        stdin: "To: root\nFrom: Logwatch <logwatch@web1>\nSubject: Logwatch for web1 (Linux)\nAuto-Submitted: auto-generated\nMIME-Version: 1.0\nContent-Transfer-Encoding: 7bit\nContent-Type: text/plain; charset=\"iso-8859-1\"\n\n ################### Logwatch 7.7 (07/22/22) ####################\n --------------------- SSHD Begin ------------------------\n Failed logins from: 203.0.113.9: 12 times\n",
        wanted: &["Logwatch for web1 (Linux)", "logwatch@web1", "Failed logins from: 203.0.113.9: 12 times"],
    },
    Replay {
        caller: "mdadm 4.2",
        arg0: "/usr/sbin/sendmail",
        args: &["-t"],
        shell: false,
        cron_env: false,
        stdin: "From: mdadm monitoring <root@web1>\nTo: root\nSubject: Fail event on /dev/md0:web1\n\nThis is an automatically generated mail message from mdadm\nrunning on web1\n\nA Fail event had been detected on md device /dev/md0.\n",
        wanted: &["Fail event on /dev/md0:web1", "root@web1", "A Fail event had been detected on md device /dev/md0."],
    },
    Replay {
        caller: "sudo 1.9.13",
        arg0: "/usr/sbin/sendmail",
        args: &["-t"],
        shell: false,
        cron_env: false,
        stdin: "To: root\nFrom: root\nAuto-Submitted: auto-generated\nSubject: *** SECURITY information for web1 ***\n\nweb1 : Nov 24 14:00:00 : mallory : user NOT in sudoers ; TTY=pts/0 ; PWD=/home/mallory ; USER=root ; COMMAND=/bin/ls\n",
        wanted: &["*** SECURITY information for web1 ***", "user NOT in sudoers"],
    },
    Replay {
        caller: "fail2ban 1.0.2",
        arg0: "/usr/sbin/sendmail",
        args: &["-f", "fail2ban@web1", "root@localhost, admin@example.org"],
        shell: true,
        cron_env: false,
        stdin: "Subject: [Fail2Ban] sshd: banned 203.0.113.9 from web1\nDate: Tue, 24 Nov 2026 14:00:00 +0000\nFrom: Fail2Ban <fail2ban@web1>\nTo: root@localhost, admin@example.org\n\nHi,\n\nThe IP 203.0.113.9 has just been banned by Fail2Ban after\n5 attempts against sshd.\n\nRegards,\n\nFail2Ban\n",
        wanted: &["[Fail2Ban] sshd: banned 203.0.113.9 from web1", "fail2ban@web1", "has just been banned by Fail2Ban"],
    },
    Replay {
        caller: "rkhunter (cron.daily)",
        arg0: "/usr/sbin/sendmail",
        args: &["root@localhost"],
        shell: true,
        cron_env: true,
        stdin: "Subject: [rkhunter] web1 - Daily report\nTo: root@localhost\n\nWarning: The file properties have changed:\n         File: /usr/bin/ls\n",
        wanted: &["[rkhunter] web1 - Daily report", "The file properties have changed"],
    },
];

#[test]
fn recorded_callers_replayed() {
    for replay in REPLAYS {
        let w = World::new("replay");
        let mut cmd = if replay.shell {
            let mut line = quote(&shim());
            for arg in replay.args {
                line.push(' ');
                line.push_str(&quote(Path::new(arg)));
            }
            let mut cmd = w.command("/bin/sh");
            cmd.arg("-c").arg(line);
            cmd
        } else {
            let mut cmd = w.command(shim());
            cmd.arg0(replay.arg0).args(replay.args);
            cmd
        };
        if replay.cron_env {
            cmd.env_clear()
                .env("PATH", "/usr/bin:/bin")
                .env("SMTP_BRIDGE_CONFIG", &w.config);
        }
        let out = run(cmd, replay.stdin.as_bytes());
        assert_eq!(out.status.code(), Some(0), "{}: {out:?}", replay.caller);
        assert!(
            out.stdout.is_empty() && out.stderr.is_empty(),
            "{}: {out:?}",
            replay.caller
        );
        let digest = w.digest();
        for text in replay.wanted {
            assert!(
                digest.contains(text),
                "{}: want {text:?} in:\n{digest}",
                replay.caller
            );
        }
    }
}

fn quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "'\\''"))
}

/// monitoring-plugins' `check_mailq -M postfix`, the usual Nagios/Icinga check of a mail
/// queue, reads our `mailq`: its copy is pointed at the shim (its `utils.pm` fixes the path
/// to /usr/bin/mailq), and it must count the waiting messages from Postfix's closing line.
#[test]
fn check_mailq_counts_the_queue() {
    let plugins = Path::new("/usr/lib/nagios/plugins");
    if !common::require_tool("perl") {
        return;
    }
    if !plugins.join("check_mailq").is_file() {
        assert!(
            !common::under_ci(),
            "check_mailq (monitoring-plugins-standard) is required under CI"
        );
        eprintln!("SKIP: check_mailq not installed");
        return;
    }
    let w = World::new("callers-check-mailq");
    let bin = w.dir.join("plugins");
    std::fs::create_dir(&bin).unwrap();
    std::fs::copy(plugins.join("check_mailq"), bin.join("check_mailq")).unwrap();
    let mailq = bin.join("mailq");
    std::os::unix::fs::symlink(shim(), &mailq).unwrap();
    let utils = std::fs::read_to_string(plugins.join("utils.pm"))
        .unwrap()
        .replace("\"/usr/bin/mailq\"", &format!("\"{}\"", mailq.display()));
    std::fs::write(bin.join("utils.pm"), utils).unwrap();
    let check = || {
        let mut cmd = w.command("perl");
        cmd.arg(bin.join("check_mailq"))
            .args(["-w", "1", "-c", "5", "-M", "postfix"]);
        let out = run(cmd, b"");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, text) = check();
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("OK"), "{text}");
    // Two messages waiting (the bridge fails): WARNING, with the count.
    w.bridge.set_behaviour(common::Behaviour::Status(503));
    for n in 0..2 {
        let mut cmd = w.command(shim());
        cmd.args(["-i", "root"]);
        assert_ok(
            &run(cmd, format!("Subject: waiting {n}\n\nx\n").as_bytes()),
            "sendmail",
        );
    }
    let (code, text) = check();
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("WARNING") && text.contains("2"), "{text}");
    eprintln!("check_mailq: {}", text.trim());
}
