//! The daemon binary under test, the one harness of every suite that runs it (daemon,
//! hostile, crash, faults, access): started with `--loglevel debug` and its stderr captured
//! line by line, killed with SIGKILL on drop; with a stand-in bridge and a directory of its
//! own in one call ([`setup`]), and the checks those suites share (peak memory, health).
//!
//! Two SMTP clients over a raw socket: [`Smtp`] reports a dead connection as an error
//! instead of panicking (a crash harness must see the kill, not die of it), and [`Client`]
//! is the same client for tests that expect the daemon to behave: any failure is a panic
//! at the test's line.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::{StandInBridge, TestDir};

/// Bound for things that take milliseconds when all is well.
pub const SOON: Duration = Duration::from_secs(20);

/// The daemon's peak resident memory must stay below this, whatever its clients do.
pub const MEMORY_BOUND_KIB: u64 = 64 * 1024;

/// A stand-in bridge, and a daemon delivering to it, started on a free loopback port with
/// `extra` TOML lines in its config, in a fresh directory named after `label` (its
/// [`Daemon::dir`], which holds the config and the spool, removed after the daemon is
/// killed).
pub fn setup(label: &str, extra: &str) -> (StandInBridge, Daemon) {
    setup_with(label, extra, |_| {})
}

/// Like [`setup`]; `command` may add to the daemon's command (pre_exec, environment).
pub fn setup_with(
    label: &str,
    extra: &str,
    command: impl Fn(&mut Command),
) -> (StandInBridge, Daemon) {
    let bridge = StandInBridge::start();
    let dir = TestDir::new(label);
    let mut d = start_on_a_free_port(
        |port| {
            super::write_config(
                &dir.path,
                &bridge.url,
                &format!("listen = [\"127.0.0.1:{port}\"]\n{extra}"),
            )
        },
        command,
    );
    d.dir = Some(dir);
    (bridge, d)
}

/// Starts the daemon with the configuration `config_for(port)` writes (it listens on that
/// loopback port). A port free a moment ago can be taken before the daemon binds it (by
/// another test process, side by side): it then exits with EX_OSERR (71), and gets another.
pub fn start_on_a_free_port(
    mut config_for: impl FnMut(u16) -> PathBuf,
    command: impl Fn(&mut Command),
) -> Daemon {
    for _ in 0..5 {
        let port = super::free_port();
        let config = config_for(port);
        match Daemon::try_start(&config, port, None, &command) {
            Ok(d) => return d,
            Err(e) if e.status.code() == Some(71) => {}
            Err(e) => panic!("daemon exited with {}:\n{}", e.status, e.stderr),
        }
    }
    panic!("no port the daemon could bind in 5 tries")
}

/// A running daemon; SIGKILLed on drop.
pub struct Daemon {
    child: Option<Child>,
    /// The port it listens on (loopback).
    pub port: u16,
    /// Its config file.
    pub config: PathBuf,
    /// Every stderr line so far (all of them: `--loglevel debug` copies each line there).
    lines: Arc<Mutex<Vec<String>>>,
    /// The thread collecting them; it ends when the daemon's stderr closes.
    collector: Option<JoinHandle<()>>,
    /// The directory [`setup`] made for it (dropped after the kill: fields drop last).
    dir: Option<TestDir>,
}

/// Why a daemon did not come up.
#[derive(Debug)]
pub struct StartError {
    /// Its exit status.
    pub status: ExitStatus,
    /// What it said.
    pub stderr: String,
}

impl Daemon {
    /// Starts the daemon on `config`, waiting until `port` (127.0.0.1) accepts.
    /// Panics when it exits first.
    pub fn start(config: &Path, port: u16) -> Daemon {
        Daemon::try_start(config, port, None, |_| {})
            .unwrap_or_else(|e| panic!("daemon exited with {}:\n{}", e.status, e.stderr))
    }

    /// Like [`Daemon::start`], with its syslog going to `syslog` (see [`Syslog`]).
    pub fn start_syslog(config: &Path, port: u16, syslog: &Syslog) -> Daemon {
        Daemon::try_start(config, port, Some(syslog), |_| {})
            .unwrap_or_else(|e| panic!("daemon exited with {}:\n{}", e.status, e.stderr))
    }

    /// Like [`Daemon::start`]; `setup` may add to the command (pre_exec, environment).
    /// With `syslog`, the daemon runs in a private mount namespace where that socket is its
    /// syslog (needs root). An early exit is returned, so a caller can retry on another port.
    pub fn try_start(
        config: &Path,
        port: u16,
        syslog: Option<&Syslog>,
        setup: impl FnOnce(&mut Command),
    ) -> Result<Daemon, StartError> {
        Daemon::try_start_at(config, port, syslog, "debug", setup)
    }

    /// [`Daemon::try_start`] with `--loglevel level`.
    pub fn try_start_at(
        config: &Path,
        port: u16,
        syslog: Option<&Syslog>,
        level: &str,
        setup: impl FnOnce(&mut Command),
    ) -> Result<Daemon, StartError> {
        let mut cmd = match syslog {
            None => Command::new(super::daemon_bin()),
            Some(log) => log.wrap(&super::daemon_bin()),
        };
        cmd.arg("--config").arg(config).args(["--loglevel", level]);
        setup(&mut cmd);
        Daemon::spawn(cmd, config, port)
    }

    /// Runs `cmd` (a daemon command line, arguments included) with stderr captured, and
    /// waits until `port` on 127.0.0.1 accepts.
    pub fn spawn(mut cmd: Command, config: &Path, port: u16) -> Result<Daemon, StartError> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start smtp_bridge");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let collector = child.stderr.take().map(|stderr| {
            let lines = lines.clone();
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    match line {
                        Ok(l) => lines.lock().unwrap().push(l),
                        Err(_) => break,
                    }
                }
            })
        });
        let mut d = Daemon {
            child: Some(child),
            port,
            config: config.to_path_buf(),
            lines,
            collector,
            dir: None,
        };
        let deadline = Instant::now() + SOON;
        loop {
            // Listening, and on a socket of its own: a port another process took meanwhile
            // accepts too, and a test must not talk to a stranger's daemon.
            if TcpStream::connect(("127.0.0.1", port)).is_ok() && holds_listener(d.pid(), port) {
                return Ok(d);
            }
            if let Some(status) = d.child.as_mut().unwrap().try_wait().unwrap() {
                d.exited();
                return Err(StartError {
                    status,
                    stderr: d.log_text(),
                });
            }
            assert!(
                Instant::now() < deadline,
                "daemon not listening:\n{}",
                d.log_text()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Forgets the exited child, and waits (bounded) until its last words are collected:
    /// the collector ends when the daemon's stderr closes.
    fn exited(&mut self) {
        self.child = None;
        if let Some(collector) = self.collector.take() {
            super::wait_until(SOON, || collector.is_finished());
        }
    }

    /// The directory [`setup`] made for it: the config, and the spool in `spool/`.
    pub fn dir(&self) -> &TestDir {
        self.dir.as_ref().expect("a daemon started by setup()")
    }

    /// Everything in its spool's queue directory, temporary files included.
    pub fn queue_entries(&self) -> Vec<String> {
        std::fs::read_dir(self.dir().join("spool").join("queue"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Files of messages still being received (`.tmp.*`) in its spool's queue directory.
    pub fn temp_files(&self) -> Vec<String> {
        self.queue_entries()
            .into_iter()
            .filter(|name| name.starts_with(".tmp."))
            .collect()
    }

    /// Spare files (`.spare.*`: delivered messages' files kept for new ones) in its spool's
    /// queue directory.
    pub fn spare_files(&self) -> Vec<String> {
        self.queue_entries()
            .into_iter()
            .filter(|name| name.starts_with(".spare."))
            .collect()
    }

    /// Messages in its spool's queue directory (not the `.tmp.*` files of messages still
    /// being received, nor spare files).
    pub fn queued_files(&self) -> usize {
        self.queue_entries()
            .iter()
            .filter(|name| !name.starts_with('.'))
            .count()
    }

    /// Its process ID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    /// Its address: 127.0.0.1 and its port.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Its stderr lines so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Its stderr so far, as one text.
    pub fn log_text(&self) -> String {
        self.log_lines().join("\n")
    }

    /// Waits (bounded) until a log line contains `needle`.
    #[track_caller]
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        assert!(
            super::wait_until(timeout, || self
                .log_lines()
                .iter()
                .any(|l| l.contains(needle))),
            "log never showed {needle:?}:\n{}",
            self.log_text()
        );
    }

    /// Waits (bounded) until the log holds every one of `needles` (the daemon sends its lines
    /// in batches, a few milliseconds after they happen), and returns it.
    #[track_caller]
    pub fn wait_log_all(&self, needles: &[&str], timeout: Duration) -> String {
        let complete = |log: &str| needles.iter().all(|n| log.contains(n));
        super::wait_until(timeout, || complete(&self.log_text()));
        let log = self.log_text();
        super::assert_contains(&log, needles);
        log
    }

    /// Waits (bounded) until `count` log lines contain `needle`, and returns the log.
    #[track_caller]
    pub fn wait_log_count(&self, needle: &str, count: usize, timeout: Duration) -> String {
        let seen = || {
            self.log_lines()
                .iter()
                .filter(|l| l.contains(needle))
                .count()
        };
        let reached = super::wait_until(timeout, || seen() >= count);
        assert!(
            reached,
            "{} lines with {needle:?}, not {count}:\n{}",
            seen(),
            self.log_text()
        );
        self.log_text()
    }

    /// Sends it `signal`.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal the daemon");
    }

    /// SIGKILL, and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits (bounded by `timeout`) for it to exit on its own; panics with its log when it
    /// does not.
    #[track_caller]
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("daemon running");
        let mut status = None;
        let exited = super::wait_until(timeout, || {
            status = child.try_wait().unwrap();
            status.is_some()
        });
        assert!(exited, "daemon did not exit:\n{}", self.log_text());
        self.exited();
        status.unwrap()
    }

    /// SIGTERM, then waits (bounded) for the exit.
    #[track_caller]
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait_exit(SOON)
    }

    /// Whether it is still running (it was neither reaped nor found exited).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().expect("try_wait").is_none())
    }

    /// A field of its /proc/PID/status in KiB (`VmHWM`, `VmRSS`).
    pub fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("daemon /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc status"))
    }

    /// CPU time (user + system) it used so far, for the figures (never asserted).
    pub fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the parenthesised command name; utime and stime are the 12th and
        // 13th of them, in clock ticks (USER_HZ, 100 on Linux).
        let ticks: u64 = stat
            .rsplit_once(')')
            .map(|(_, rest)| {
                rest.split_whitespace()
                    .skip(11)
                    .take(2)
                    .filter_map(|f| f.parse::<u64>().ok())
                    .sum()
            })
            .unwrap_or(0);
        ticks as f64 / 100.0
    }

    /// Its open file descriptors.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Checks that its peak memory (VmHWM) stayed below [`MEMORY_BOUND_KIB`], prints it
    /// with the CPU time as `<suite>: <what>: …` (the figures FUZZING.md quotes), and
    /// returns it (KiB).
    #[track_caller]
    pub fn assert_memory_bounded(&self, what: &str) -> u64 {
        let hwm = self.status_kib("VmHWM");
        eprintln!(
            "{}: {what}: daemon VmHWM {hwm} KiB, CPU {:.2} s",
            env!("CARGO_CRATE_NAME"),
            self.cpu_seconds()
        );
        assert!(
            hwm < MEMORY_BOUND_KIB,
            "{what}: daemon peak RSS {hwm} KiB, bound {MEMORY_BOUND_KIB} KiB"
        );
        hwm
    }

    /// It is alive, a fresh client gets a greeting and a NOOP answer, and nothing panicked.
    #[track_caller]
    pub fn assert_healthy(&mut self) {
        assert!(self.is_running(), "daemon exited:\n{}", self.log_text());
        let mut c = self.greeted();
        c.expect("NOOP", 250);
        c.expect("QUIT", 221);
        let log = self.log_text();
        assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");
    }

    /// A raw client connected to 127.0.0.1 and greeted (EHLO done).
    pub fn client(&self) -> io::Result<Smtp> {
        Smtp::greeted(self.addr())
    }

    /// A [`Client`] connected, nothing read yet (the greeting is the caller's).
    #[track_caller]
    pub fn connect(&self) -> Client {
        Client::connect(self.addr())
    }

    /// A [`Client`] connected, greeted with 220, and its `EHLO client.test` answered 250.
    #[track_caller]
    pub fn greeted(&self) -> Client {
        Client::greeted(self.addr())
    }

    /// A [`Client`] greeted with 220 that said `EHLO name`; with the EHLO reply (250), to
    /// read the extensions offered.
    #[track_caller]
    pub fn ehlo(&self, name: &str) -> (Client, String) {
        let mut c = self.connect();
        c.greeting();
        let text = c.expect(&format!("EHLO {name}"), 250);
        (c, text)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Whether process `pid` holds the socket listening on 127.0.0.1 or any address at `port`
/// (read from /proc; true when its descriptors cannot be read, as nothing can be told).
fn holds_listener(pid: u32, port: u16) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return true;
    };
    let sockets: Vec<String> = fds
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|link| link.to_string_lossy().into_owned())
        .collect();
    // /proc/net/tcp: "sl local_address rem_address st … inode"; 0A is LISTEN.
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(|line| {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    let local = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
                    let inode = f.get(9)?;
                    (local == port && *f.get(3)? == "0A").then(|| format!("socket:[{inode}]"))
                })
                .collect::<Vec<_>>()
        })
        .any(|inode| sockets.contains(&inode))
}

/// A line-level SMTP client over a blocking socket; every failure is an `io::Error`.
pub struct Smtp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Smtp {
    /// Connects with read and write timeouts of [`SOON`].
    pub fn connect(addr: SocketAddr) -> io::Result<Smtp> {
        let stream = TcpStream::connect_timeout(&addr, SOON)?;
        stream.set_read_timeout(Some(SOON))?;
        stream.set_write_timeout(Some(SOON))?;
        Ok(Smtp {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
        })
    }

    /// Connects, expects 220, says EHLO.
    pub fn greeted(addr: SocketAddr) -> io::Result<Smtp> {
        let mut c = Smtp::connect(addr)?;
        let (code, text) = c.reply()?;
        if code != 220 {
            return Err(io::Error::other(format!("greeting: {text}")));
        }
        c.expect("EHLO client.test", 250)?;
        Ok(c)
    }

    /// Reads one (possibly multi-line) reply: its code and full text (bytes that are not
    /// UTF-8 shown as U+FFFD).
    pub fn reply(&mut self) -> io::Result<(u16, String)> {
        let mut text = String::new();
        loop {
            let mut line = Vec::new();
            if self.reader.read_until(b'\n', &mut line)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed after {text:?}"),
                ));
            }
            let line = String::from_utf8_lossy(&line);
            text.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                let code = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
                return Ok((code, text));
            }
        }
    }

    /// Sends raw bytes.
    pub fn send(&mut self, raw: &[u8]) -> io::Result<()> {
        self.writer.write_all(raw)
    }

    /// Sends a command line (any bytes; CRLF added) and returns the reply.
    pub fn cmd(&mut self, line: impl AsRef<[u8]>) -> io::Result<(u16, String)> {
        let mut raw = line.as_ref().to_vec();
        raw.extend_from_slice(b"\r\n");
        self.send(&raw)?;
        self.reply()
    }

    /// Sends a command and fails unless the reply has `code`.
    pub fn expect(&mut self, line: &str, code: u16) -> io::Result<String> {
        let (c, text) = self.cmd(line)?;
        if c != code {
            return Err(io::Error::other(format!(
                "{line:?} -> {text:?}, wanted {code}"
            )));
        }
        Ok(text)
    }

    /// MAIL, RCPT, DATA and the message (`body` must not contain a lone dot line), up to
    /// but not including the final reply: call [`Smtp::reply`] for it. Split so that a
    /// caller can note the message as in flight between the two.
    pub fn start_message(&mut self, body: &str) -> io::Result<()> {
        self.start_message_from("a@example.org", &["root"], body.as_bytes())
    }

    /// MAIL from `from` and RCPT to each of `to`, each answered 250.
    pub fn envelope(&mut self, from: &str, to: &[&str]) -> io::Result<()> {
        self.expect(&format!("MAIL FROM:<{from}>"), 250)?;
        for rcpt in to {
            self.expect(&format!("RCPT TO:<{rcpt}>"), 250)?;
        }
        Ok(())
    }

    /// [`Smtp::start_message`] from `from` to the recipients `to`.
    pub fn start_message_from(&mut self, from: &str, to: &[&str], body: &[u8]) -> io::Result<()> {
        self.envelope(from, to)?;
        self.expect("DATA", 354)?;
        self.send(body)
    }

    /// Ends the data with CRLF.CRLF.
    pub fn end_message(&mut self) -> io::Result<()> {
        self.send(b"\r\n.\r\n")
    }

    /// One whole transaction, from `a@example.org` to `root`; returns the final reply.
    pub fn message(&mut self, body: &str) -> io::Result<(u16, String)> {
        self.message_from("a@example.org", &["root"], body.as_bytes())
    }

    /// One whole transaction from `from` to the recipients `to`; returns the final reply.
    pub fn message_from(
        &mut self,
        from: &str,
        to: &[&str],
        body: &[u8],
    ) -> io::Result<(u16, String)> {
        self.start_message_from(from, to, body)?;
        self.end_message()?;
        self.reply()
    }

    /// Whether the server closed the connection (EOF or error within the read timeout).
    pub fn closed(&mut self) -> bool {
        let mut buf = [0u8; 64];
        matches!(self.reader.read(&mut buf), Ok(0) | Err(_))
    }

    /// Another handle on the socket, for a thread that writes while this one reads.
    pub fn writer(&self) -> io::Result<TcpStream> {
        self.writer.try_clone()
    }

    /// Shuts the connection down both ways (a client hanging up mid-transaction).
    pub fn shutdown(&self) -> io::Result<()> {
        self.writer.shutdown(Shutdown::Both)
    }
}

/// [`Smtp`] for tests that expect the daemon to behave: every failure (a dead connection,
/// a timeout, an unexpected code) is a panic at the test's line.
pub struct Client(Smtp);

impl Client {
    /// Connects to `addr`, with read and write timeouts of [`SOON`]; reads nothing.
    #[track_caller]
    pub fn connect(addr: SocketAddr) -> Client {
        Client(ok(Smtp::connect(addr), &format!("connect to {addr}")))
    }

    /// Connects to `addr`, expects 220, says `EHLO client.test` and expects 250.
    #[track_caller]
    pub fn greeted(addr: SocketAddr) -> Client {
        let mut c = Client::connect(addr);
        c.greeting();
        c.expect("EHLO client.test", 250);
        c
    }

    /// Reads the greeting and expects 220; returns its text.
    #[track_caller]
    pub fn greeting(&mut self) -> String {
        let (code, text) = self.reply();
        assert_eq!(code, 220, "greeting: {text}");
        text
    }

    /// Reads one (possibly multi-line) reply: its code and full text.
    #[track_caller]
    pub fn reply(&mut self) -> (u16, String) {
        ok(self.0.reply(), "read reply")
    }

    /// Sends raw bytes.
    #[track_caller]
    pub fn send(&mut self, raw: &[u8]) {
        ok(self.0.send(raw), "send")
    }

    /// Sends a command line (any bytes; CRLF added) and returns the reply.
    #[track_caller]
    pub fn cmd(&mut self, line: impl AsRef<[u8]>) -> (u16, String) {
        let line = line.as_ref();
        ok(
            self.0.cmd(line),
            &format!("{:?}", String::from_utf8_lossy(line)),
        )
    }

    /// Sends a command and expects `code`; returns the reply's text.
    #[track_caller]
    pub fn expect(&mut self, line: &str, code: u16) -> String {
        let (c, text) = self.cmd(line);
        assert_eq!(c, code, "{line:?} -> {text:?}");
        text
    }

    /// MAIL from `from` and RCPT to each of `to`, each answered 250.
    #[track_caller]
    pub fn envelope(&mut self, from: &str, to: &[&str]) {
        ok(self.0.envelope(from, to), "envelope")
    }

    /// MAIL from `a@example.org`, RCPT `root`, DATA, then `body`, without the final dot.
    #[track_caller]
    pub fn start_message(&mut self, body: impl AsRef<[u8]>) {
        self.start_message_from("a@example.org", &["root"], body)
    }

    /// [`Client::start_message`] from `from` to the recipients `to`.
    #[track_caller]
    pub fn start_message_from(&mut self, from: &str, to: &[&str], body: impl AsRef<[u8]>) {
        ok(
            self.0.start_message_from(from, to, body.as_ref()),
            "start a message",
        )
    }

    /// One whole transaction, from `a@example.org` to `root`; returns the final reply.
    #[track_caller]
    pub fn message(&mut self, body: impl AsRef<[u8]>) -> (u16, String) {
        self.message_from("a@example.org", &["root"], body)
    }

    /// One whole transaction from `from` to the recipients `to`; returns the final reply.
    #[track_caller]
    pub fn message_from(
        &mut self,
        from: &str,
        to: &[&str],
        body: impl AsRef<[u8]>,
    ) -> (u16, String) {
        self.start_message_from(from, to, body);
        self.send(b"\r\n.\r\n");
        self.reply()
    }

    /// Whether the server closed the connection (EOF or error within the read timeout).
    pub fn closed(&mut self) -> bool {
        self.0.closed()
    }

    /// Another handle on the socket, for a thread that writes while this one reads.
    #[track_caller]
    pub fn writer(&self) -> TcpStream {
        ok(self.0.writer(), "clone the client's socket")
    }

    /// Shuts the connection down both ways (a client hanging up mid-transaction).
    #[track_caller]
    pub fn shutdown(&self) {
        ok(self.0.shutdown(), "shut the client's socket down")
    }
}

/// The value, or a panic at the test's line saying what failed (a closure would move the
/// panic's location into this file).
#[track_caller]
fn ok<T>(result: io::Result<T>, what: &str) -> T {
    match result {
        Ok(value) => value,
        Err(e) => panic!("{what}: {e}"),
    }
}

/// Asserts that `reply` is the 250 of a queued message.
#[track_caller]
pub fn queued(reply: &(u16, String)) {
    assert_eq!(reply.0, 250, "{:?}", reply.1);
    assert!(reply.1.contains("queued as"), "{:?}", reply.1);
}

/// A message with `subject`, a text `body`, and CRLF line ends.
pub fn simple(subject: &str, body: &str) -> String {
    format!("From: a@example.org\r\nTo: root\r\nSubject: {subject}\r\n\r\n{body}")
}

/// A stand-in syslog daemon: a datagram socket collecting every line with its severity.
pub struct Syslog {
    /// The socket's path.
    pub path: PathBuf,
    lines: Arc<Mutex<Vec<(u8, String)>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Syslog {
    /// Binds `dir/syslog.sock` (writable by all: the daemon reconnects as nobody).
    pub fn start(dir: &Path) -> Syslog {
        Syslog::start_slow(dir, Duration::ZERO)
    }

    /// [`Syslog::start`], taking `per_line` over each line, as a busy syslog daemon does:
    /// the socket's short queue (ten datagrams by default) fills up under a burst.
    pub fn start_slow(dir: &Path, per_line: Duration) -> Syslog {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("syslog.sock");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("bind syslog socket");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            let (lines, stop) = (lines.clone(), stop.clone());
            thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    if let Ok(n) = socket.recv(&mut buf) {
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        // <PRI>: facility * 8 + severity.
                        let pri = text
                            .strip_prefix('<')
                            .and_then(|t| t.split('>').next())
                            .and_then(|p| p.parse::<u16>().ok())
                            .unwrap_or(u16::MAX);
                        let severity = if pri == u16::MAX {
                            255
                        } else {
                            (pri & 7) as u8
                        };
                        lines.lock().unwrap().push((severity, text));
                        if !per_line.is_zero() {
                            thread::sleep(per_line);
                        }
                    }
                }
            });
        }
        Syslog { path, lines, stop }
    }

    /// A command that runs `program` in a private mount namespace where this socket is its
    /// syslog: there is no `/dev/log` on this machine, so the logger tries `/var/run/syslog`
    /// next, and a fresh `/run` gets our socket bound there (needs root and `unshare`).
    pub fn wrap(&self, program: &Path) -> Command {
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(
                "mount -t tmpfs -o size=64k,mode=755 none /run && : > /run/syslog && \
                 mount --bind \"$SYSLOG_SOCKET\" /run/syslog && exec \"$0\" \"$@\"",
            )
            .arg(program)
            .env("SYSLOG_SOCKET", &self.path);
        c
    }

    /// Every datagram so far: severity (0 emergency .. 7 debug; 255 unparsable) and text.
    pub fn lines(&self) -> Vec<(u8, String)> {
        self.lines.lock().unwrap().clone()
    }

    /// The lines at `severity` or more urgent (6 = info and above).
    pub fn at_most(&self, severity: u8) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|(s, _)| *s <= severity)
            .map(|(_, t)| t)
            .collect()
    }
}

impl Drop for Syslog {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
