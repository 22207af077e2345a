//! The daemon binary under test, for the reliability suites (crash, faults, access): started
//! with `--loglevel debug` and its stderr captured line by line, killed with SIGKILL on drop,
//! and a raw line-level SMTP client that reports a dead connection as an error instead of
//! panicking (a crash harness must see the kill, not die of it).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Bound for things that take milliseconds when all is well.
pub const SOON: Duration = Duration::from_secs(20);

/// A running daemon; SIGKILLed on drop.
pub struct Daemon {
    child: Option<Child>,
    /// The port it listens on (loopback).
    pub port: u16,
    /// Its config file.
    pub config: PathBuf,
    /// Every stderr line so far (all of them: `--loglevel debug` copies each line there).
    lines: Arc<Mutex<Vec<String>>>,
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
        if let Some(stderr) = child.stderr.take() {
            let lines = lines.clone();
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    match line {
                        Ok(l) => lines.lock().unwrap().push(l),
                        Err(_) => break,
                    }
                }
            });
        }
        let mut d = Daemon {
            child: Some(child),
            port,
            config: config.to_path_buf(),
            lines,
        };
        let deadline = Instant::now() + SOON;
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(d);
            }
            if let Some(status) = d.child.as_mut().unwrap().try_wait().unwrap() {
                d.child = None;
                // Let the reader thread collect the last words.
                thread::sleep(Duration::from_millis(50));
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

    /// Its process ID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
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

    /// SIGKILL, and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits (bounded) for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("daemon running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + SOON;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                thread::sleep(Duration::from_millis(50));
                return status;
            }
            assert!(Instant::now() < deadline, "daemon did not stop on SIGTERM");
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// A raw client connected to 127.0.0.1 and greeted (EHLO done).
    pub fn client(&self) -> io::Result<Smtp> {
        Smtp::greeted(SocketAddr::from(([127, 0, 0, 1], self.port)))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
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

    /// Reads one (possibly multi-line) reply: its code and full text.
    pub fn reply(&mut self) -> io::Result<(u16, String)> {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed after {text:?}"),
                ));
            }
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

    /// Sends a command line and returns the reply.
    pub fn cmd(&mut self, line: &str) -> io::Result<(u16, String)> {
        self.send(format!("{line}\r\n").as_bytes())?;
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
        self.expect("MAIL FROM:<a@example.org>", 250)?;
        self.expect("RCPT TO:<root>", 250)?;
        self.expect("DATA", 354)?;
        self.send(body.as_bytes())?;
        Ok(())
    }

    /// Ends the data with CRLF.CRLF.
    pub fn end_message(&mut self) -> io::Result<()> {
        self.send(b"\r\n.\r\n")
    }

    /// One whole transaction; returns the final reply.
    pub fn message(&mut self, body: &str) -> io::Result<(u16, String)> {
        self.start_message(body)?;
        self.end_message()?;
        self.reply()
    }

    /// Whether the server closed the connection (EOF or error within the read timeout).
    pub fn closed(&mut self) -> bool {
        let mut buf = [0u8; 64];
        matches!(self.reader.read(&mut buf), Ok(0) | Err(_))
    }
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
