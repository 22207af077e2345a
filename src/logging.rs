//! Logging: the one `log::Log` of both binaries, writing each event as one line to syslog
//! (facility mail, the given ident, our pid) through `/dev/log`, falling back to stderr where
//! there is no syslog, and never blocking or panicking when syslog goes away.
//!
//! Conventions for every module: one line per event; message events carry the queue ID first,
//! Postfix-like: `1A2B3C: from=<root@host>, size=1234, nrcpt=2`,
//! `1A2B3C: to=<a@b>, status=sent (bridge answered 200)`,
//! `1A2B3C: status=deferred (connection refused)`. Never a message body.
//!
//! When a line cannot reach syslog (no `/dev/log`, as in a container), it goes to stderr if
//! it is a warning or an error, or if stderr is a terminal. Lesser lines stay off a stderr
//! that is a pipe, as Postfix's own `sendmail` keeps them: programs that call `sendmail`
//! (PHP, git send-email) show or log whatever it prints, and must not see chatter from us.
//!
//! Warnings and errors get Postfix's `warning: ` and `error: ` prefixes. Carriage returns,
//! line feeds and other control characters in a message are escaped (`\n`, `\x1b`), so a
//! header value from a client can neither split a log line nor forge one.

use std::io::{self, IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::config::LogLevel;

/// The longest message sent, in bytes; longer ones are cut (at a character boundary) and
/// marked. Syslog daemons drop or split long datagrams (rsyslog's default limit is 8 KiB).
pub const MAX_LINE: usize = 4000;

/// How often a lost syslog connection is tried again; lines in between go to stderr.
const RECONNECT_INTERVAL: Duration = Duration::from_secs(1);

/// What goes to stderr besides syslog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stderr {
    /// Every line (the daemon in the foreground, tests).
    Always,
    /// Lines that cannot reach syslog: warnings and errors, and every line when stderr is a
    /// terminal (see the module documentation).
    Fallback,
    /// Nothing, ever: for the `sendmail` shim, whose callers treat any text on stderr as a
    /// failure (Symfony) or mail it to root (cron). Lines syslog cannot take are dropped.
    Never,
}

/// Installs the global logger. `ident` is the syslog tag (`smtp_bridge` for the daemon,
/// `sendmail` for the shim). With `stderr_too`, lines also go to stderr (the daemon in the
/// foreground with `--loglevel debug`, tests); without it, stderr is only the fallback
/// ([`Stderr::Fallback`]). Safe to call more than once: later calls only change the level.
pub fn init(ident: &str, level: LogLevel, stderr_too: bool) {
    let stderr = if stderr_too {
        Stderr::Always
    } else {
        Stderr::Fallback
    };
    init_with(ident, level, stderr);
}

/// [`init`] with full control over stderr. Like `init`, later calls only change the level.
pub fn init_with(ident: &str, level: LogLevel, stderr: Stderr) {
    let mut created = false;
    let logger = LOGGER.get_or_init(|| {
        created = true;
        MailLog {
            level: AtomicU8::new(encode(level)),
            stderr,
            stderr_is_terminal: io::stderr().is_terminal(),
            syslog: Mutex::new(SyslogSink::new(ident, None, RECONNECT_INTERVAL)),
        }
    });
    if created {
        // Fails only when another logger was installed first (a test harness, say); then
        // that one keeps the job and ours stays unused.
        let _ = log::set_logger(logger);
    }
    set_level(level);
}

/// Changes the level of the installed logger (SIGHUP reload).
pub fn set_level(level: LogLevel) {
    if let Some(logger) = LOGGER.get() {
        logger.level.store(encode(level), Ordering::Relaxed);
    }
    log::set_max_level(level.to_level_filter());
}

static LOGGER: OnceLock<MailLog> = OnceLock::new();

fn encode(level: LogLevel) -> u8 {
    match level {
        LogLevel::Error => 0,
        LogLevel::Warning => 1,
        LogLevel::Info => 2,
        LogLevel::Debug => 3,
    }
}

fn decode(n: u8) -> LogLevel {
    match n {
        0 => LogLevel::Error,
        1 => LogLevel::Warning,
        2 => LogLevel::Info,
        _ => LogLevel::Debug,
    }
}

/// The installed logger.
struct MailLog {
    /// The [`LogLevel`], encoded, so a reload needs no lock.
    level: AtomicU8,
    stderr: Stderr,
    stderr_is_terminal: bool,
    syslog: Mutex<SyslogSink>,
}

/// Whether a record from `target` is one of ours. Libraries we use (ureq, rustls, mio) log
/// their internals at debug level, request headers included; only their warnings and
/// errors are worth a line in the mail log.
fn is_ours(target: &str) -> bool {
    let root = target.split("::").next().unwrap_or(target);
    matches!(root, "smtp_bridge" | "sendmail")
}

impl log::Log for MailLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        let max = decode(self.level.load(Ordering::Relaxed)).to_level_filter();
        metadata.level() <= max
            && (metadata.level() <= log::Level::Warn || is_ours(metadata.target()))
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = render(record.level(), &record.args().to_string());
        // A thread that panicked while holding the lock left the sink usable: it holds no
        // invariant a half-finished send could break.
        let mut sink = self.syslog.lock().unwrap_or_else(|p| p.into_inner());
        let sent = sink.send(record.level(), &line);
        let to_stderr = wants_stderr(self.stderr, sent, record.level(), self.stderr_is_terminal);
        if to_stderr {
            sink.write_stderr(&line);
        }
    }

    fn flush(&self) {
        let _ = io::stderr().flush();
    }
}

/// Whether a line goes to stderr, given the mode, whether syslog took it, its level, and
/// whether stderr is a terminal.
fn wants_stderr(mode: Stderr, sent: bool, level: log::Level, stderr_is_terminal: bool) -> bool {
    match mode {
        Stderr::Always => true,
        Stderr::Fallback => !sent && (level <= log::Level::Warn || stderr_is_terminal),
        Stderr::Never => false,
    }
}

/// The text of one line: the Postfix-style severity prefix, then the message made safe.
fn render(level: log::Level, message: &str) -> String {
    let prefix = match level {
        log::Level::Error => "error: ",
        log::Level::Warn => "warning: ",
        _ => "",
    };
    let mut line = String::with_capacity(prefix.len() + message.len().min(MAX_LINE));
    line.push_str(prefix);
    line.push_str(&sanitize(message, MAX_LINE));
    line
}

/// Escapes what would split or forge a log line and cuts the result at `max` bytes.
fn sanitize(message: &str, max: usize) -> String {
    const CUT: &str = " [truncated]";
    let mut out = String::with_capacity(message.len().min(max));
    for c in message.chars() {
        let mut buf = [0u8; 4];
        let piece: &str = match c {
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\t",
            c if c.is_control() => {
                // Covers C0, DEL and C1; all of them fit in two hex digits but C1 needs
                // the \u form to be unambiguous.
                let escaped = if (c as u32) < 0x80 {
                    format!("\\x{:02x}", c as u32)
                } else {
                    format!("\\u{:04x}", c as u32)
                };
                if out.len() + escaped.len() > max {
                    out.push_str(CUT);
                    return out;
                }
                out.push_str(&escaped);
                continue;
            }
            c => c.encode_utf8(&mut buf),
        };
        if out.len() + piece.len() > max {
            out.push_str(CUT);
            return out;
        }
        out.push_str(piece);
    }
    out
}

type SyslogConn = syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>;

/// The connection to the local syslog daemon, made again when it is lost.
struct SyslogSink {
    ident: String,
    /// The socket; `None` means the usual places (`/dev/log`, then `/var/run/syslog`).
    path: Option<PathBuf>,
    conn: Option<SyslogConn>,
    /// When the last connection attempt failed, to space out the next ones.
    failed_at: Option<Instant>,
    retry_after: Duration,
}

impl SyslogSink {
    fn new(ident: &str, path: Option<PathBuf>, retry_after: Duration) -> SyslogSink {
        let mut sink = SyslogSink {
            ident: ident.to_owned(),
            path,
            conn: None,
            failed_at: None,
            retry_after,
        };
        // Connect now: the daemon opens syslog before it drops root and maybe chroots.
        sink.connect();
        sink
    }

    fn connect(&mut self) -> bool {
        let formatter = syslog::Formatter3164 {
            facility: syslog::Facility::LOG_MAIL,
            hostname: None,
            process: self.ident.clone(),
            pid: std::process::id(),
        };
        let result = match &self.path {
            Some(p) => syslog::unix_custom(formatter, p),
            None => syslog::unix(formatter),
        };
        match result {
            Ok(conn) => {
                make_non_blocking(&conn.backend);
                self.conn = Some(conn);
                self.failed_at = None;
                true
            }
            Err(_) => {
                self.conn = None;
                self.failed_at = Some(Instant::now());
                false
            }
        }
    }

    /// Sends one line. Returns false when it did not reach syslog (the caller then writes it
    /// to stderr, so it is not lost).
    fn send(&mut self, level: log::Level, line: &str) -> bool {
        if self.conn.is_none() {
            let wait_over = self
                .failed_at
                .is_none_or(|t| t.elapsed() >= self.retry_after);
            if !wait_over || !self.connect() {
                return false;
            }
        }
        match self.send_once(level, line) {
            Ok(()) => true,
            // syslog is busy: this line goes to stderr, the connection stays.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            // syslog restarted (ECONNREFUSED on the old socket) or went away: connect again
            // at once, and fall back to stderr if that does not work.
            Err(_) => self.connect() && self.send_once(level, line).is_ok(),
        }
    }

    fn send_once(&mut self, level: log::Level, line: &str) -> io::Result<()> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(io::Error::from(io::ErrorKind::NotConnected));
        };
        // A daemon that forks after opening the log reports its own pid.
        conn.formatter.pid = std::process::id();
        let result = match level {
            log::Level::Error => conn.err(line),
            log::Level::Warn => conn.warning(line),
            log::Level::Info => conn.info(line),
            log::Level::Debug | log::Level::Trace => conn.debug(line),
        };
        result.map_err(|e| match e {
            syslog::Error::Write(io) | syslog::Error::Io(io) => io,
            other => io::Error::other(other.to_string()),
        })
    }

    /// The stderr form of a line: `ident[pid]: line`. Errors writing it are ignored: there is
    /// nowhere left to report them.
    fn write_stderr(&self, line: &str) {
        let mut err = io::stderr().lock();
        let _ = writeln!(err, "{}[{}]: {}", self.ident, std::process::id(), line);
    }
}

/// A wedged syslog daemon must not stall the event loop: datagram sends fail with
/// `WouldBlock` instead of waiting, stream writes give up after a moment.
fn make_non_blocking(backend: &syslog::LoggerBackend) {
    match backend {
        syslog::LoggerBackend::Unix(sock) => {
            let _ = sock.set_nonblocking(true);
        }
        syslog::LoggerBackend::UnixStream(writer) => {
            let _ = writer
                .get_ref()
                .set_write_timeout(Some(Duration::from_millis(200)));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram as FakeSyslog;

    #[test]
    fn sanitize_table() {
        let table: &[(&str, &str)] = &[
            ("plain", "plain"),
            ("a\nb", "a\\nb"),
            ("a\r\nb", "a\\r\\nb"),
            ("tab\tkept", "tab\tkept"),
            ("esc\u{1b}[31m", "esc\\x1b[31m"),
            ("nul\u{0}", "nul\\x00"),
            ("del\u{7f}", "del\\x7f"),
            ("c1\u{85}", "c1\\u0085"),
            ("Jörg 😀", "Jörg 😀"),
        ];
        for (input, want) in table {
            assert_eq!(&sanitize(input, MAX_LINE), want, "{input:?}");
        }
    }

    #[test]
    fn sanitize_cuts_long_lines_on_char_boundaries() {
        let long = "é".repeat(MAX_LINE);
        let out = sanitize(&long, MAX_LINE);
        assert!(out.len() <= MAX_LINE + " [truncated]".len());
        assert!(out.ends_with(" [truncated]"));
        let short = sanitize("\n\n\n", 5);
        assert_eq!(short, "\\n\\n [truncated]");
    }

    #[test]
    fn render_prefixes() {
        assert_eq!(render(log::Level::Error, "x"), "error: x");
        assert_eq!(render(log::Level::Warn, "x\ny"), "warning: x\\ny");
        assert_eq!(
            render(log::Level::Info, "ABC: status=sent"),
            "ABC: status=sent"
        );
        assert_eq!(render(log::Level::Debug, "d"), "d");
    }

    #[test]
    fn stderr_rules() {
        use log::Level::{Debug, Error, Info, Warn};
        use Stderr::{Always, Fallback, Never};
        // (mode, reached syslog, level, stderr is a terminal, written to stderr)
        let table = [
            (Always, true, Info, false, true),
            (Always, false, Debug, false, true),
            (Fallback, true, Error, true, false),
            (Fallback, false, Error, false, true),
            (Fallback, false, Warn, false, true),
            (Fallback, false, Info, false, false),
            (Fallback, false, Debug, false, false),
            (Fallback, false, Info, true, true),
            (Fallback, false, Debug, true, true),
            (Never, false, Error, true, false),
            (Never, false, Error, false, false),
        ];
        for (mode, sent, level, tty, want) in table {
            assert_eq!(
                wants_stderr(mode, sent, level, tty),
                want,
                "{mode:?} sent={sent} {level} tty={tty}"
            );
        }
    }

    #[test]
    fn only_our_debug_lines() {
        assert!(is_ours("smtp_bridge"));
        assert!(is_ours("smtp_bridge::server"));
        assert!(is_ours("sendmail"));
        assert!(!is_ours("ureq::unversioned::transport"));
        assert!(!is_ours("rustls::client"));
    }

    fn fake_syslog(dir: &std::path::Path) -> (PathBuf, FakeSyslog) {
        let path = dir.join("log");
        let _ = std::fs::remove_file(&path);
        let sock = FakeSyslog::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        (path, sock)
    }

    fn recv(sock: &FakeSyslog) -> String {
        let mut buf = vec![0u8; 65536];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("smtp_bridge-logging-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Facility mail (2) and the severities map to the priorities syslog expects; the tag is
    /// `ident[pid]`.
    #[test]
    fn syslog_lines_have_mail_facility_ident_and_pid() {
        let dir = temp_dir("facility");
        let (path, server) = fake_syslog(&dir);
        let mut sink = SyslogSink::new("testident", Some(path), Duration::ZERO);
        let pid = std::process::id();
        let table = [
            (log::Level::Error, "<19>"),
            (log::Level::Warn, "<20>"),
            (log::Level::Info, "<22>"),
            (log::Level::Debug, "<23>"),
        ];
        for (level, priority) in table {
            let line = render(level, "Q1: status=sent\r\nforged: line");
            assert!(sink.send(level, &line));
            let got = recv(&server);
            assert!(got.starts_with(priority), "{level}: {got:?}");
            assert!(
                got.contains(&format!(" testident[{pid}]: ")),
                "{level}: {got:?}"
            );
            assert!(
                got.ends_with("Q1: status=sent\\r\\nforged: line"),
                "{got:?}"
            );
            assert!(!got.contains('\n'));
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    /// syslog going away is not fatal (lines are reported as not sent, for stderr), and a
    /// restarted syslog gets the lines again.
    #[test]
    fn syslog_restart_is_survived() {
        let dir = temp_dir("restart");
        let (path, server) = fake_syslog(&dir);
        let mut sink = SyslogSink::new("t", Some(path.clone()), Duration::ZERO);
        assert!(sink.send(log::Level::Info, "one"));
        assert!(recv(&server).ends_with("one"));

        drop(server);
        std::fs::remove_file(&path).unwrap();
        assert!(!sink.send(log::Level::Info, "two"), "no syslog: fall back");
        assert!(!sink.send(log::Level::Info, "three"), "still none");

        let (_, server) = fake_syslog(&dir);
        assert!(sink.send(log::Level::Info, "four"), "reconnected");
        assert!(recv(&server).ends_with("four"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn no_syslog_at_all() {
        let dir = temp_dir("none");
        let mut sink = SyslogSink::new("t", Some(dir.join("absent")), Duration::ZERO);
        assert!(!sink.send(log::Level::Error, "nowhere"));
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A syslog daemon that stops reading fills its queue; then sends fail at once instead of
    /// blocking the caller.
    #[test]
    fn wedged_syslog_does_not_block() {
        let dir = temp_dir("wedged");
        let (path, _server) = fake_syslog(&dir);
        let mut sink = SyslogSink::new("t", Some(path), Duration::ZERO);
        let line = "x".repeat(1000);
        let mut refused = 0;
        // The queue of an unread datagram socket holds a few hundred kilobytes at most.
        for _ in 0..10_000 {
            if !sink.send(log::Level::Info, &line) {
                refused += 1;
                break;
            }
        }
        assert_eq!(refused, 1, "sends never failed: they would have blocked");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn init_twice_changes_level() {
        init("smtp_bridge-test", LogLevel::Warning, false);
        assert_eq!(log::max_level(), log::LevelFilter::Warn);
        init("ignored", LogLevel::Debug, false);
        assert_eq!(log::max_level(), log::LevelFilter::Debug);
        set_level(LogLevel::Error);
        assert_eq!(log::max_level(), log::LevelFilter::Error);
        log::error!("smtp_bridge logging unit test: one line\nnot two");
        set_level(LogLevel::Info);
        assert_eq!(log::max_level(), log::LevelFilter::Info);
    }
}
